"""The connector as a hospital installs it: the built wheel, in a fresh virtualenv, outside the repo.

The wheel is built from a copy of the working tree (the build never writes into the checkout) and
installed with `--no-deps` into a venv made `--without-pip`; that venv sees the project's already
installed dependencies through a .pth file placed after its own site-packages, so nothing is
downloaded and the connector itself can only come from the wheel. Also here: the package list in
pyproject.toml matches the source tree, and the settings override the shipped folders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from setuptools import find_namespace_packages
from typer.testing import CliRunner

from connector.cli import app
from connector.policy.bundle import PolicyBundle
from connector.resources import shipped_deid_recipes_dir, shipped_policies_dir

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from: the code, the shipped folders, and what pyproject.toml names.
SOURCES = ("pyproject.toml", "README.md", "connector", "catalog", "policies", "deid_recipes")
DATA_PACKAGES = {"connector_data.policies": "policies", "connector_data.deid_recipes": "deid_recipes"}


def _setuptools_config() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def _files(folder: Path, pattern: str = "*") -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob(pattern)
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_package_list_names_every_package_of_the_source_tree() -> None:
    # The list is explicit (find cannot be combined with package-dir): a package missing from it
    # would be missing from the wheel while every test in the checkout still passes.
    config = _setuptools_config()
    found = set(
        find_namespace_packages(
            where=str(REPO), include=["connector*", "catalog*"], exclude=["*__pycache__*"]
        )
    )
    assert set(config["packages"]) == found | set(DATA_PACKAGES), (
        "pyproject.toml [tool.setuptools] packages differs from the source tree"
    )
    assert config["package-dir"] == DATA_PACKAGES


def test_the_checkout_resolves_the_shipped_folders_to_its_own() -> None:
    # An editable install maps the data packages onto the repository's folders: one source of truth.
    assert shipped_policies_dir().resolve() == REPO / "policies"
    assert shipped_deid_recipes_dir().resolve() == REPO / "deid_recipes"


def test_deid_recipes_dir_setting_replaces_the_shipped_recipes(tmp_path: Path) -> None:
    recipes = tmp_path / "site-recipes"
    shutil.copytree(REPO / "deid_recipes", recipes)
    (recipes / "safe_attributes.deid").unlink()
    env = {"CONNECTOR_DATA_DIR": str(tmp_path / "data"), "CONNECTOR_DEID_RECIPES_DIR": str(recipes)}
    cohort = tmp_path / "in"
    cohort.mkdir()
    result = CliRunner().invoke(app, ["deid", str(cohort), str(tmp_path / "out"), "--dataset", "x"], env=env)
    assert result.exit_code != 0
    # The error names the configured folder: the shipped one (which has the file) was not read.
    assert str(recipes / "safe_attributes.deid") in "".join(result.output.split())  # unwrapped


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    """stdout of a command that must succeed (its output in the failure message otherwise)."""
    command = [str(arg) for arg in args]
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert completed.returncode == 0, (
        f"{command} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
    )
    return completed.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the connector from its wheel and nothing else of the project."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        origin = REPO / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(origin, source / name)
    env = _clean_environment()
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    _run(
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        root / "dist",
        source,
        cwd=root,
        env=env,
    )
    (wheel,) = (root / "dist").glob("imaging_connector-*.whl")
    venv = root / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root, env=env)
    python = venv / "bin" / "python"
    # The project's pip installs into the new venv (--python); that venv cannot see the project's
    # packages yet, so pip finds nothing installed to replace and downloads nothing.
    _run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=root, env=env)
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root, env=env)
    # A path line in a .pth lands on sys.path after the venv's own site-packages, so the wheel's
    # `connector` wins; .pth files inside the project's site-packages (its editable finder) are not run.
    dependencies = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    pth = Path(purelib.strip()) / "zz_project_dependencies.pth"
    pth.write_text("\n".join(dependencies) + "\n", encoding="utf-8")
    return venv


def _clean_environment() -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT"}
    return {key: value for key, value in os.environ.items() if key in keep}


def test_the_installed_wheel_deidentifies_and_tests_the_shipped_policies(
    installed: Path, tmp_path: Path
) -> None:
    work = tmp_path / "elsewhere"  # outside the repository: no ./policies or ./deid_recipes to stumble on
    work.mkdir()
    env = {**_clean_environment(), "CONNECTOR_DATA_DIR": str(work / "data")}
    python, connector = installed / "bin" / "python", installed / "bin" / "connector"

    probe = (
        "import json, sys, connector, catalog, connector.resources as r; print(json.dumps({"
        "'connector': connector.__file__, 'catalog': catalog.__file__, 'path': sys.path, "
        "'policies': str(r.shipped_policies_dir()), 'recipes': str(r.shipped_deid_recipes_dir())}))"
    )
    where = json.loads(_run(python, "-c", probe, cwd=work, env=env))
    for key in ("connector", "catalog", "policies", "recipes"):
        assert Path(where[key]).is_relative_to(installed), f"{key} comes from {where[key]}, not the wheel"
    assert not [entry for entry in where["path"] if entry and Path(entry).resolve() == REPO]
    # The wheel carries every module and every shipped file of the source tree.
    site = Path(where["connector"]).parents[1]
    for package in ("connector", "catalog"):
        assert _files(REPO / package, "*.py") <= _files(site / package), f"modules of {package} missing"
    assert _files(Path(where["policies"])) == _files(REPO / "policies")
    assert _files(Path(where["recipes"])) == _files(REPO / "deid_recipes")

    identified, deidentified = work / "identified", work / "deidentified"
    _run(connector, "synth", identified, "--patients", "2", cwd=work, env=env)
    _run(connector, "deid", identified, deidentified, "--dataset", "wheel-check", cwd=work, env=env)
    report = json.loads((deidentified / "deid-report.json").read_text(encoding="utf-8"))
    assert report["written"] > 0
    assert len(_files(deidentified) - {"deid-report.json"}) == report["written"]

    tested = json.loads(_run(connector, "policy", "test", "--json", cwd=work, env=env))
    assert tested["passed"] is True and tested["tests"] > 0 and tested["failed"] == []
    # The bundle the installed connector reads is the repository's, byte for byte.
    digest = (
        "from connector.policy.bundle import PolicyBundle, default_policies_dir; "
        "print(PolicyBundle.from_dir(default_policies_dir()).digest)"
    )
    assert (
        _run(python, "-c", digest, cwd=work, env=env).strip()
        == PolicyBundle.from_dir(REPO / "policies").digest
    )
