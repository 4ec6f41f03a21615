"""The researcher's side of compute-to-data against the real API on 127.0.0.1: the Python client
(connector.client) and the `jobs`, `teams` and `model` commands submit signed packages, follow
them while a real worker runs them in the sandbox, cancel them and download and verify their
signed results; denials, refusals and an unreachable connector are reported with the server's
reasons. No token may appear in any message.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from connector.api.app import create_app
from connector.cli import app
from connector.client import (
    ConnectorClient,
    ConnectorError,
    ConnectorUnreachable,
    Job,
    ResultError,
    verify_with,
)
from connector.compute.demo_model import demo_package
from connector.compute.package import manifest_json, read_package
from connector.compute.package_signing import generate_team_key
from connector.compute.sandbox import SandboxLimits
from connector.datasets.ingest import ingest
from connector.deid.options import DEFAULT_OPTIONS
from connector.demo import serving
from connector.identity.roles import Role
from connector.jobs.runner import Worker
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort

DATASET = "screening-ct"
TEAM = "leuven-ai-lab"
PURPOSE = "ai-development"


def activate(runtime: Runtime) -> None:
    """The shipped policies, with the dataset open to jobs at k = 2."""
    files = dict(PolicyBundle.from_dir(default_policies_dir()).files)
    document = json.loads(files["data.json"])
    document["connector"]["settings"]["datasets"][DATASET] = {"k": 2}
    files["data.json"] = json.dumps(document)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo", "client tests")
    assert outcome.activated, outcome.reasons


@dataclass(frozen=True)
class Served:
    runtime: Runtime
    url: str
    researcher: str  # token
    steward: str  # token
    package: bytes
    signature: str


def _permit(runtime: Runtime, **changes: Any) -> str:
    assert runtime.permit_issuer is not None
    arguments: dict[str, Any] = {
        "requester": "alice",
        "organisation": "Uni Leuven AI Lab",
        "purposes": [PURPOSE],
        "datasets": [DATASET],
        "countries": ["BE"],
    }
    arguments.update(changes)
    return runtime.permit_issuer.issue(**arguments)


def _token(runtime: Runtime, role: Role, sub: str) -> str:
    assert runtime.dev_issuer is not None
    return runtime.dev_issuer.issue(sub, [role], organisation="Uni Leuven AI Lab", country="BE")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One connector for the module: 3 synthetic patients ingested, k = 2, the team's key registered."""
    folder = tmp_path_factory.mktemp("client-cli")
    generate_cohort(folder / "cohort", 3, seed=21)
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith("CONNECTOR_"):
                patch.delenv(key)
        runtime = build_runtime(load_settings(data_dir=folder / "data"))
    try:
        ingest(runtime, folder / "cohort", DATASET, DEFAULT_OPTIONS)
        activate(runtime)
        private_pem, public_pem = generate_team_key("EdDSA")
        package, signature = demo_package(private_pem, TEAM)
        with serving(runtime) as url:
            steward = _token(runtime, Role.STEWARD, "anna")
            ConnectorClient(url, steward).register_team_key(TEAM, public_pem)
            yield Served(runtime, url, _token(runtime, Role.RESEARCHER, "alice"), steward, package, signature)
    finally:
        runtime.close()


@pytest.fixture
def worker(served: Served) -> Iterator[Worker]:
    running = Worker(served.runtime, SandboxLimits(threads=1), poll_seconds=0.1)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_the_client_submits_follows_and_verifies_a_job(served: Served, worker: Worker) -> None:
    with ConnectorClient(served.url, served.researcher) as client:
        assert served.researcher not in repr(client)
        job = client.submit_job(
            served.package,
            served.signature,
            dataset=DATASET,
            purpose=PURPOSE,
            permit=_permit(served.runtime),
            cohort={"modality": ["CT"]},
        )
        assert isinstance(job, Job) and job.state in ("queued", "running")
        seen: list[Job] = []
        done = client.wait(job.id, timeout=120, poll=0.1, on_progress=seen.append)
        assert done.state == "succeeded" and done.has_result and done.final
        assert done.studies_total == 3 and done.studies_done == 3 and seen[-1] == done
        assert client.job(job.id) == done and job.id in [listed.id for listed in client.jobs()]
        body = client.verified_result(job.id)
        assert body["job"] == job.id and body["model"] == "demo-nodule-classifier@1.0.0"
        assert body["model_digest"] == done.package_digest and len(body["per_study"]) == 3
        keys = client.connector_keys()
        token = client.result(job.id)
        assert verify_with(token, keys) == body
        head, payload, signature = token.split(".")
        with pytest.raises(ResultError, match="signature"):
            verify_with(f"{head}.{payload[:-4]}AAAA.{signature}", keys)
        # A finished job cannot be cancelled into anything else.
        assert client.cancel(job.id).state == "succeeded"
        catalog = client.search_catalog(modality=["CT"], per_page=5)
        assert isinstance(catalog, dict) and "@context" in catalog


def test_the_client_reports_denials_and_refusals_with_the_servers_reasons(served: Served) -> None:
    client = ConnectorClient(served.url, served.researcher)
    with pytest.raises(ConnectorError) as denied:
        client.submit_job(
            served.package, served.signature, dataset=DATASET, purpose=PURPOSE, permit="not-a-jwt"
        )
    assert denied.value.status == 403 and denied.value.code == "access_denied"
    assert denied.value.reasons and any("permit" in reason for reason in denied.value.reasons)
    assert denied.value.job and client.job(denied.value.job).state == "denied"
    _, foreign = demo_package(generate_team_key("EdDSA")[0], TEAM)
    with pytest.raises(ConnectorError) as refused:
        client.submit_job(
            served.package, foreign, dataset=DATASET, purpose=PURPOSE, permit=_permit(served.runtime)
        )
    assert refused.value.status == 422 and refused.value.code == "unknown_key" and refused.value.problems
    with pytest.raises(ConnectorError) as invalid:
        client.submit_job(
            served.package,
            served.signature,
            dataset=DATASET,
            purpose=PURPOSE,
            permit=_permit(served.runtime),
            batch_size=999,
        )
    assert invalid.value.code == "invalid_request" and any("batch_size" in p for p in invalid.value.problems)
    with pytest.raises(ConnectorError) as unknown:
        client.job("0" * 32)
    assert unknown.value.status == 404 and unknown.value.code == "not_found"
    with pytest.raises(ConnectorError) as forbidden:
        ConnectorClient(served.url, served.steward).jobs()
    assert forbidden.value.status == 403
    with pytest.raises(ValueError, match="cohort field"):
        client.submit_job(b"", "x", dataset=DATASET, purpose=PURPOSE, permit="p", cohort={"colour": ["red"]})
    # An injected client (here the app in-process) is used as it is; the token never sticks to it.
    with TestClient(create_app(served.runtime)) as in_process:
        injected = ConnectorClient("http://testserver", served.researcher, client=in_process)
        assert denied.value.job in [job.id for job in injected.jobs()]
        assert "authorization" not in in_process.headers
    for error in (denied.value, refused.value, forbidden.value):
        for token in (served.researcher, served.steward):
            assert token not in str(error) and token not in repr(error)
    client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_connector_is_one_clear_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectorUnreachable, match="cannot reach"):
        ConnectorClient(url, "secret-token-value").jobs()
    result = CliRunner().invoke(app, ["jobs", "list", "--url", url, "--token", "secret-token-value"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the connector" in lines[0] and url in lines[0]
    assert "secret-token-value" not in result.output
    no_token = CliRunner().invoke(app, ["jobs", "list", "--url", url], env={"IMAGING_CONNECTOR_TOKEN": None})
    assert no_token.exit_code == 2 and "IMAGING_CONNECTOR_TOKEN" in no_token.stderr


def test_the_client_variables_do_not_upset_the_connectors_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGING_CONNECTOR_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("IMAGING_CONNECTOR_TOKEN", "x")
    assert load_settings(data_dir=tmp_path).port > 0


def _invoke(served: Served, *args: str, token: str | None = None) -> Any:
    env = {"IMAGING_CONNECTOR_URL": served.url, "IMAGING_CONNECTOR_TOKEN": token or served.researcher}
    return CliRunner().invoke(app, list(args), env=env)


def test_a_team_packs_signs_registers_and_runs_a_model_from_the_command_line(
    served: Served, worker: Worker, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    made = CliRunner().invoke(app, ["model", "keygen", str(keys), "--json"])
    assert made.exit_code == 0, made.output
    key_id = json.loads(made.stdout)["key_id"]
    assert stat.S_IMODE((keys / "team-private.pem").stat().st_mode) == 0o600
    again = CliRunner().invoke(app, ["model", "keygen", str(keys)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.stderr
    es256 = CliRunner().invoke(app, ["model", "keygen", str(tmp_path / "es"), "--alg", "ES256"])
    assert es256.exit_code == 0 and "ES256" in es256.stdout
    # The demo model's manifest and weights, packed and signed as a new team would.
    model = read_package(served.package)
    (tmp_path / "manifest.json").write_bytes(manifest_json(model.manifest))
    (tmp_path / "model.safetensors").write_bytes(model.weights)
    zip_path = tmp_path / "model.zip"
    packed = CliRunner().invoke(
        app,
        [
            "model",
            "pack",
            str(tmp_path / "manifest.json"),
            str(tmp_path / "model.safetensors"),
            str(zip_path),
        ],
    )
    assert packed.exit_code == 0 and "demo-nodule-classifier@1.0.0" in packed.stdout, packed.output
    signed = CliRunner().invoke(
        app, ["model", "sign", str(zip_path), "--key", str(keys / "team-private.pem"), "--team", "cli-team"]
    )
    assert signed.exit_code == 0 and key_id in signed.stdout, signed.output
    # The submission is refused until a steward registers the team's key.
    permit_file = tmp_path / "permit.jwt"
    permit_file.write_text(_permit(served.runtime))
    submit = [
        "jobs",
        "submit",
        "--package",
        str(zip_path),
        "--signature",
        str(tmp_path / "model.jws"),
        "--dataset",
        DATASET,
        "--purpose",
        PURPOSE,
        "--permit",
        str(permit_file),
        "--modality",
        "CT",
    ]
    refused = _invoke(served, *submit)
    assert refused.exit_code == 2 and "unknown_key" in refused.stdout, refused.output
    registered = _invoke(
        served, "teams", "register-key", "cli-team", str(keys / "team-public.pem"), token=served.steward
    )
    assert registered.exit_code == 0 and key_id in registered.stdout, registered.output
    ran = _invoke(served, *submit, "--wait", "--poll", "0.2")
    assert ran.exit_code == 0, ran.output
    assert "succeeded" in ran.stdout and "studies: 3/3" in ran.stdout
    job_id = ran.stdout.split()[1]
    result_file = tmp_path / "result.jws"
    fetched = _invoke(served, "jobs", "results", job_id, "--out", str(result_file), "--verify")
    assert fetched.exit_code == 0 and "verified" in fetched.stdout, fetched.output
    token = result_file.read_text().strip()
    assert verify_with(token, ConnectorClient(served.url, None).connector_keys())["job"] == job_id
    status = json.loads(_invoke(served, "jobs", "status", job_id, "--json").stdout)
    assert status["state"] == "succeeded" and status["studies_done"] == 3
    listed = json.loads(_invoke(served, "jobs", "list", "--json").stdout)
    assert job_id in [item["id"] for item in listed]
    for output in (made, packed, signed, refused, registered, ran, fetched):
        assert served.researcher not in output.output and served.steward not in output.output


def test_cli_denials_refusals_and_cancelling_a_queued_job(served: Served, tmp_path: Path) -> None:
    (tmp_path / "model.zip").write_bytes(served.package)
    (tmp_path / "model.jws").write_text(served.signature)
    (tmp_path / "permit.jwt").write_text(_permit(served.runtime))
    (tmp_path / "bad-permit.jwt").write_text("not-a-jwt")
    _, foreign = demo_package(generate_team_key("EdDSA")[0], TEAM)
    (tmp_path / "foreign.jws").write_text(foreign)

    def submit(signature: str, permit: str, *extra: str) -> Any:
        return _invoke(
            served,
            "jobs",
            "submit",
            "--package",
            str(tmp_path / "model.zip"),
            "--signature",
            str(tmp_path / signature),
            "--dataset",
            DATASET,
            "--purpose",
            PURPOSE,
            "--permit",
            str(tmp_path / permit),
            *extra,
        )

    denied = submit("model.jws", "bad-permit.jwt")
    assert denied.exit_code == 1 and "DENIED" in denied.stdout and "permit" in denied.stdout, denied.output
    too_small = submit("model.jws", "permit.jwt", "--sex", "X", "--json")
    assert too_small.exit_code == 1, too_small.output
    answer = json.loads(too_small.stdout)
    assert answer["error"] == "access_denied" and any("below the minimum" in r for r in answer["reasons"])
    refused = submit("foreign.jws", "permit.jwt")
    assert refused.exit_code == 2 and "refused" in refused.stdout and "unknown_key" in refused.stdout
    # No worker runs in this test: the job stays queued until it is cancelled.
    queued = submit("model.jws", "permit.jwt", "--json")
    assert queued.exit_code == 0, queued.output
    job_id = json.loads(queued.stdout)["id"]
    assert json.loads(queued.stdout)["state"] == "queued"
    cancelled = _invoke(served, "jobs", "cancel", job_id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout, cancelled.output
    status = _invoke(served, "jobs", "status", job_id)
    assert "cancelled" in status.stdout and "cancelled by its submitter" in status.stdout
    no_result = _invoke(served, "jobs", "results", job_id, "--out", str(tmp_path / "none.jws"))
    assert no_result.exit_code == 2 and "not_found" in no_result.stderr
    assert not (tmp_path / "none.jws").exists()
    (tmp_path / "public.pem").write_bytes(generate_team_key("EdDSA")[1])
    forbidden = _invoke(served, "teams", "register-key", "x-team", str(tmp_path / "public.pem"))
    assert forbidden.exit_code == 2 and "forbidden" in forbidden.stderr, forbidden.output
