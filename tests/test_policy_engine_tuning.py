"""The Go runtime settings of the embedded OPA engine: how they are given, read, and that decisions keep.

The embedded engine's Go runtime reads its collector settings from the environment the process was
started with, so the checks that need other settings run a child process. No timings are asserted
here (benchmarks/policy.py measures them); these tests check the settings' plumbing and that the
decisions of the shipped policies are the same with the recommended settings, across collections.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connector.policy import engine
from connector.policy.bundle import PolicyBundle
from connector.policy.engine import (
    GO_RUNTIME_SETTINGS,
    EmbeddedOpaBackend,
    go_runtime_environment,
    go_runtime_settings,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "policies" / "examples"
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc/self/environ")

# Evaluates every example of policies/examples `rounds` times in a fresh process and prints the
# answers of the first round, and whether every later round gave the same.
DECIDE = """
import json, sys
from pathlib import Path
from connector.policy.bundle import PolicyBundle
from connector.policy.engine import EmbeddedOpaBackend
examples = Path(sys.argv[1])
state = json.loads((examples / "state.json").read_text())["connector"]["state"]
paths = [path for path in sorted(examples.glob("*.json")) if path.name != "state.json"]
cases = [json.loads(path.read_text()) for path in paths]
backend = EmbeddedOpaBackend()
backend.load(PolicyBundle.from_dir(examples.parent), state)
first = [backend.evaluate(f"connector.decision.{case['policy']}", case["input"]) for case in cases]
same = all(
    [backend.evaluate(f"connector.decision.{case['policy']}", case["input"]) for case in cases] == first
    for _ in range(int(sys.argv[2]))
)
backend.close()
print(json.dumps({"answers": first, "same": same}))
"""


def _in_child(code: str, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _without_go_settings() -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name not in GO_RUNTIME_SETTINGS}
    environment["PYTHONPATH"] = str(ROOT)
    return environment


def test_the_environment_gets_the_missing_settings_and_keeps_the_operators() -> None:
    given = {"PATH": "/bin", "GOGC": "200", "GODEBUG": "madvdontneed=1"}
    environment = go_runtime_environment(given)
    assert environment["PATH"] == "/bin"
    assert environment["GOGC"] == "200"
    assert environment["GOMEMLIMIT"] == GO_RUNTIME_SETTINGS["GOMEMLIMIT"]
    assert sorted(environment["GODEBUG"].split(",")) == ["gcstoptheworld=1", "madvdontneed=1"]
    assert given == {"PATH": "/bin", "GOGC": "200", "GODEBUG": "madvdontneed=1"}
    assert go_runtime_environment({"GODEBUG": "gcstoptheworld=0"})["GODEBUG"] == "gcstoptheworld=0"
    assert go_runtime_environment(environment) == environment


@needs_proc
def test_the_settings_are_those_the_process_was_started_with() -> None:
    # Assigning os.environ after the start changes nothing for the Go runtime, nor in the report.
    code = (
        "import json, os\n"
        "os.environ['GOMEMLIMIT'] = '1GiB'\n"
        "from connector.policy.engine import go_runtime_settings\n"
        "print(json.dumps(go_runtime_settings()))"
    )
    started = {**_without_go_settings(), "GOGC": "300", "GODEBUG": "madvdontneed=1"}
    child = _in_child(code, started)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {"GOGC": "300", "GOMEMLIMIT": None, "GODEBUG=gcstoptheworld": None}


@needs_proc
def test_running_with_default_settings_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine, "_checked_go_runtime", False)
    monkeypatch.setattr(engine, "_start_environment", lambda: {"GOGC": "off"})
    with caplog.at_level(logging.INFO, logger="connector.policy"):
        for _ in range(2):
            EmbeddedOpaBackend().close()
    said = [
        record.getMessage() for record in caplog.records if "Go's default settings" in record.getMessage()
    ]
    assert len(said) == 1
    assert "GOMEMLIMIT, GODEBUG=gcstoptheworld" in said[0]
    assert go_runtime_settings()  # the real start environment can be read here


@needs_proc
def test_decisions_are_the_same_with_the_recommended_settings_across_collections() -> None:
    bundle = PolicyBundle.from_dir(ROOT / "policies")
    state = json.loads((EXAMPLES / "state.json").read_text())["connector"]["state"]
    cases = [
        json.loads(path.read_text()) for path in sorted(EXAMPLES.glob("*.json")) if path.name != "state.json"
    ]
    backend = EmbeddedOpaBackend()
    try:
        backend.load(bundle, state)
        here = [backend.evaluate(f"connector.decision.{case['policy']}", case["input"]) for case in cases]
    finally:
        backend.close()
    assert cases and all(isinstance(answer, dict) for answer in here)

    # A smaller memory limit makes the stop-the-world collections come every few hundred decisions
    # (gctrace shows them). Not much smaller: the live heap here is ~16 MB, and a limit near it
    # makes the collector run back to back.
    tuned = go_runtime_environment({**_without_go_settings(), "GOMEMLIMIT": "64MiB"})
    tuned["GODEBUG"] += ",gctrace=1"
    child = _in_child(DECIDE, tuned, str(EXAMPLES), "40")
    assert child.returncode == 0, child.stderr
    result: dict[str, Any] = json.loads(child.stdout)
    assert result["same"] is True
    assert result["answers"] == here
    assert sum(1 for line in child.stderr.splitlines() if line.startswith("gc ")) >= 2


RESTART = """
import json, os
from connector.policy.engine import go_runtime_settings, restart_with_go_runtime_settings
restart_with_go_runtime_settings()
print(json.dumps({"pid": os.getpid(), "settings": go_runtime_settings()}))
"""


@needs_proc
def test_a_long_running_process_restarts_itself_once_with_the_missing_settings() -> None:
    started = {**_without_go_settings(), "GOGC": "100"}
    child = _in_child(RESTART, started)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert len(lines) == 1  # restarted once, before printing, and not again
    settings = json.loads(lines[0])["settings"]
    # The operator's own GOGC stays; the two missing settings are added.
    assert settings == {
        "GOGC": "100",
        "GOMEMLIMIT": GO_RUNTIME_SETTINGS["GOMEMLIMIT"],
        "GODEBUG=gcstoptheworld": "1",
    }


def test_only_serve_and_worker_are_long_running_commands() -> None:
    from connector.cli import LONG_RUNNING, command_name

    assert command_name(["serve", "--port", "8080"]) == "serve"
    assert command_name(["--config", "worker", "policy", "decide"]) == "policy"
    assert command_name(["-c", "a.toml", "worker"]) == "worker"
    assert command_name(["--version"]) is None
    assert command_name([]) is None
    assert {"serve", "worker"} == LONG_RUNNING
