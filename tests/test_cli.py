"""The `connector` command as a person uses it: help everywhere, tokens, serve, the demo."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from connector.cli import app
from connector.runtime import build_runtime
from connector.settings import load_settings


def _command_paths(group: typer.core.TyperGroup, prefix: list[str]) -> list[list[str]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths.extend(_command_paths(command, [*prefix, name]))
        else:
            paths.append([*prefix, name])
    return paths


@pytest.mark.parametrize(
    "path", _command_paths(get_command(app), []), ids=lambda p: " ".join(p) or "connector"
)
def test_every_command_has_help(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_token_issue_prints_a_token_the_service_accepts(tmp_path: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["token", "issue", "--role", "dpo", "--sub", "alice"], env=env)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    runtime = build_runtime(load_settings(data_dir=tmp_path))
    principal = runtime.verifier.verify(token)
    assert (principal.subject, sorted(principal.roles)) == ("alice", ["dpo"])
    issued = runtime.audit.query(action="token.issue")
    assert [e.object for e in issued] == ["alice"]
    assert token not in str([e.as_json() for e in issued])
    runtime.close()


def test_token_issue_refuses_an_unknown_role(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["token", "issue", "--role", "admin", "--sub", "x"], env={"CONNECTOR_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "admin" in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_starts_the_real_service_and_logs_json(tmp_path: Path) -> None:
    port = _free_port()
    from connector.policy.engine import GO_RUNTIME_SETTINGS

    env = {name: value for name, value in os.environ.items() if name not in GO_RUNTIME_SETTINGS}
    env["CONNECTOR_DATA_DIR"] = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(
                        f"serve did not start: {process.stderr.read() if process.poll() is not None else ''}"
                    )
                time.sleep(0.2)
        assert ready.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/me", timeout=5).status_code == 401
        # The service restarted itself (same pid) with the embedded engine's Go runtime settings.
        started = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        assert {f"{name}={value}".encode() for name, value in GO_RUNTIME_SETTINGS.items()} <= set(started)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    import json

    records = [json.loads(line) for line in lines]
    access = [r for r in records if r["logger"] == "connector.access"]
    assert {r["path"] for r in access} >= {"/readyz", "/v1/me"}
    assert all("request_id" in r for r in access)


# The synthetic cohort is seeded: four patients always make 120 files.
EXPORTED_FOUR_PATIENTS = 120


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(tmp_path / "demo"), "--patients", "4"])
    assert result.exit_code == 0, result.output
    assert "audit chain intact: True" in result.output
    assert "de-identified, 0 quarantined" in " ".join(result.output.split())
    assert "burned-in text cleaned" in result.output
    # The access table: one row per route, one column per role (steward, dpo, researcher, hdab, peer, none).
    rows = {
        cells[0]: cells[1:]
        for line in result.output.splitlines()
        if line.count("│") == 8 and (cells := [cell.strip() for cell in line.split("│")[1:-1]])[0]
    }
    assert rows["GET /v1/audit?limit=5"] == ["403", "200", "403", "403", "403", "401"]
    assert rows["GET /v1/me"] == ["200", "200", "200", "200", "200", "401"]
    flowing = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    assert "0 of them hold plaintext DICOM" in flowing
    assert "crypto-shredded" in flowing
    objects = list((tmp_path / "demo" / "objects").rglob("*.enc"))
    assert objects and not any(b"DICM" in path.read_bytes() for path in objects)
    assert len(list((tmp_path / "demo" / "exported").rglob("*.dcm"))) == EXPORTED_FOUR_PATIENTS
    # The DPO's policies decide the researcher's requests, each with its reason.
    assert "passed: True" in flowing and "activated v2" in flowing
    assert "allowed request (ai-development, with permit): ALLOW" in flowing
    assert "exclude 1 patient (opt-out or withdrawn consent)" in flowing
    assert "prohibited purpose (insurance-or-credit-decision): DENY" in flowing
    assert "no data permit: DENY" in flowing and "no data permit was presented" in flowing
    assert "cohort of 1 patient is below the minimum of 2" in flowing
    # Across a border: the AI team's own connector, a second process, negotiates through DSP.
    assert "contract request for purpose education: TERMINATED" in flowing
    assert "contract request for purpose ai-development: FINALIZED" in flowing
    assert "job succeeded under the agreement; signed result verified" in flowing
    assert "its token is refused from now on (403 agreement_inactive)" in flowing
    # The public catalog record as a summary; its full Turtle (hundreds of lines) in a file.
    assert "@prefix" not in result.output and "triples about" in flowing
    assert "@prefix" in (tmp_path / "demo" / "catalog-record-demo-cohort.ttl").read_text()


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "study.dcm").write_bytes(b"keep me")
    result = CliRunner().invoke(app, ["demo", "--data-dir", str(precious)])
    assert result.exit_code == 2
    assert (precious / "study.dcm").read_bytes() == b"keep me"
