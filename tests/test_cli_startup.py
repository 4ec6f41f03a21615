"""The CLI answers at once and its public surface stays frozen.

`connector --help` and friends must not import the heavy libraries (torch, MONAI, Ray, rdflib,
pyshacl): checked by module names in a fresh interpreter, never by time. The list of CLI commands
with their options and of OpenAPI routes is compared with tests/snapshots/public_surface.txt, so a
refactoring can never drop or rename a command, a flag or a route unnoticed.

Regenerate the snapshot only when a change of the public surface is intended:
    .venv/bin/python -m tests.test_cli_startup --regenerate
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "public_surface.txt"
REGENERATE = "python -m tests.test_cli_startup --regenerate"

# Top-level package names that must stay out of any `--help` (each costs seconds or hundreds of MiB).
HEAVY = ("torch", "monai", "ray", "rdflib", "pyshacl")

# Runs the real `python -m connector` entry point and writes the imported module names at exit,
# including when typer ends the run with SystemExit.
_WRAPPER = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
def _dump():
    with open(out, "w") as handle:
        json.dump(sorted(sys.modules), handle)
atexit.register(_dump)
sys.argv[0] = "connector"
runpy.run_module("connector", run_name="__main__", alter_sys=True)
"""


def imported_modules(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `connector ARGS` in a fresh interpreter; its result and every module it imported."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env["CONNECTOR_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result, set(json.loads(out.read_text()))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["deid", "--help"],
        ["ingest", "--help"],
        ["jobs", "--help"],
        ["policy", "--help"],
        ["catalog", "--help"],
        ["peer", "--help"],
        ["transfer", "start", "--help"],
        ["model", "--help"],
        ["serve", "--help"],
        ["worker", "--help"],
        ["--version"],
    ],
    ids=" ".join,
)
def test_help_imports_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    result, modules = imported_modules(args, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Usage" in result.stdout or "imaging-connector" in result.stdout
    assert heavy_in(modules) == [], f"`connector {' '.join(args)}` imported heavy modules"


def test_the_check_sees_what_a_command_imports(tmp_path: Path) -> None:
    # Without this, a wrapper that saw no imports at all would pass the test above: a command that
    # validates a catalog record loads rdflib (then stops: the dataset does not exist).
    result, modules = imported_modules(["catalog", "validate", "no-such-dataset"], tmp_path)
    assert result.returncode != 0
    assert "no-such-dataset" in result.stderr
    assert "rdflib" in heavy_in(modules)


# What `connector serve` does before its first request: settings, the assembled runtime (a fresh
# SQLite database migrated), the app with every router, the housekeeping and audit timers.
_SERVICE_START = """
import json, sys
from pathlib import Path
import uvicorn
from connector.api.app import create_app
from connector.audit.timer import AuditCheckpointer
from connector.dataspace.housekeeping import Housekeeper
from connector.observability.logging import configure_logging
from connector.runtime import build_runtime
from connector.settings import load_settings
runtime = build_runtime(load_settings(data_dir=Path(sys.argv[1])))
create_app(runtime).openapi()
runtime.close()
print(json.dumps(sorted(sys.modules)))
"""


def test_the_service_starts_without_the_job_libraries(tmp_path: Path) -> None:
    # torch and MONAI load when the embedded worker starts (after the service answers) or a job
    # runs, pyshacl when a record is validated, Ray only for the Ray executor.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    result = subprocess.run(
        [sys.executable, "-c", _SERVICE_START, str(tmp_path / "data")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    modules = set(json.loads(result.stdout.splitlines()[-1]))
    assert "connector.api.routers.catalog" in modules
    assert [m for m in heavy_in(modules) if not m.startswith("rdflib")] == []


def test_the_cli_default_transfer_format_is_the_protocols() -> None:
    # cli_dataspace spells the default out so that --help need not load the DSP message models.
    import connector.cli  # noqa: F401 (first: connector.cli registers cli_dataspace, which imports it)
    from connector.cli_dataspace import COMPUTE_TO_DATA
    from connector.dataspace import messages

    assert COMPUTE_TO_DATA == messages.COMPUTE_TO_DATA


# --- the frozen public surface -------------------------------------------------------------------


def _param_line(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return (
            f"arg {param.name}{'...' if param.nargs == -1 else ''}{'' if param.required else ' (optional)'}"
        )
    assert isinstance(param, click.Option)
    names = "/".join(sorted(param.opts)) + (
        "|" + "/".join(sorted(param.secondary_opts)) if param.secondary_opts else ""
    )
    kind = "flag" if param.is_flag else "multiple" if param.multiple else "value"
    return f"opt {names} [{kind}]{' (required)' if param.required else ''}"


def _walk(command: click.Command, path: list[str]) -> list[str]:
    lines = [" ".join(["connector", *path])]
    lines.extend(f"    {_param_line(p)}" for p in command.params if p.name != "help")
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            lines.extend(_walk(command.commands[name], [*path, name]))
    return lines


def cli_surface() -> list[str]:
    from typer.main import get_command

    from connector.cli import app

    return _walk(get_command(app), [])


def api_surface() -> list[str]:
    from connector.api.app import create_app
    from connector.runtime import build_runtime
    from connector.settings import load_settings

    with tempfile.TemporaryDirectory() as data:
        runtime = build_runtime(load_settings(data_dir=Path(data)))
        try:
            schema = create_app(runtime).openapi()
        finally:
            runtime.close()
    return [
        f"{method.upper()} {path}"
        for path, operations in sorted(schema["paths"].items())
        for method in sorted(operations)
    ]


def public_surface() -> str:
    return "\n".join(["# CLI", *cli_surface(), "", "# API", *api_surface()]) + "\n"


def test_public_surface_is_unchanged() -> None:
    expected = SNAPSHOT.read_text()
    actual = public_surface()
    assert actual == expected, (
        "the CLI commands/options or the API routes changed. If that is intended, regenerate "
        f"tests/snapshots/public_surface.txt with `{REGENERATE}` and review its diff."
    )


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: {REGENERATE}")
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(public_surface())
    print(f"wrote {SNAPSHOT}")
