"""Compute-to-data as an AI team and a hospital meet it: a signed model package submitted over the
API, decided by the policy, run by workers in a sandbox on an encrypted synthetic cohort, and a
signed result; every refusal, opt-outs, egress denial, cancellation and two workers on one queue.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from connector.api.app import create_app
from connector.audit.models import AuditEntry
from connector.compute.demo_model import demo_package
from connector.compute.package_signing import generate_team_key
from connector.compute.sandbox import SandboxLimits
from connector.datasets.ingest import ingest
from connector.datasets.models import StudyRecord
from connector.deid.options import DEFAULT_OPTIONS
from connector.identity.roles import Role
from connector.jobs import runner
from connector.jobs.models import Job
from connector.jobs.results import ResultError, verify_result
from connector.jobs.runner import Worker, fail_abandoned
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.policy.optout import import_consent
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort

DATASET = "screening-ct"
TEAM = "leuven-ai-lab"
LIMITS = SandboxLimits(threads=1)


def activate(runtime: Runtime, **terms: Any) -> None:
    files = dict(PolicyBundle.from_dir(default_policies_dir()).files)
    document = json.loads(files["data.json"])
    document["connector"]["settings"]["datasets"][DATASET] = {"k": 2, **terms}
    files["data.json"] = json.dumps(document)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo", "test terms")
    assert outcome.activated, outcome.reasons


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("jobs-cohort")
    generate_cohort(folder, 3, seed=21)
    return folder


@pytest.fixture(scope="module")
def team_key() -> tuple[bytes, bytes]:
    return generate_team_key("EdDSA")


@pytest.fixture(scope="module")
def signed_package(team_key: tuple[bytes, bytes]) -> tuple[bytes, str]:
    return demo_package(team_key[0], TEAM)


@pytest.fixture
def runtime(tmp_path: Path, cohort_dir: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(data_dir=tmp_path / "data"))
    ingest(built, cohort_dir, DATASET, DEFAULT_OPTIONS)
    activate(built)
    yield built
    built.close()


@pytest.fixture
def client(runtime: Runtime, team_key: tuple[bytes, bytes]) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        steward = headers(runtime, Role.STEWARD, "anna")
        registered = test_client.post(
            "/v1/teams/keys", json={"team": TEAM, "public_key": team_key[1].decode()}, headers=steward
        )
        assert registered.status_code == 200, registered.text
        yield test_client


def headers(runtime: Runtime, role: Role, sub: str = "alice") -> dict[str, str]:
    assert runtime.dev_issuer is not None
    token = runtime.dev_issuer.issue(sub, [role], organisation="Uni Leuven AI Lab", country="BE")
    return {"authorization": f"Bearer {token}"}


def permit(runtime: Runtime, **changes: Any) -> str:
    assert runtime.permit_issuer is not None
    arguments: dict[str, Any] = {
        "requester": "alice",
        "organisation": "Uni Leuven AI Lab",
        "purposes": ["ai-development"],
        "datasets": [DATASET],
        "countries": ["BE"],
    }
    arguments.update(changes)
    return runtime.permit_issuer.issue(**arguments)


def submit(
    client: TestClient,
    runtime: Runtime,
    package: tuple[bytes, str],
    *,
    request: dict[str, Any] | None = None,
    user: str = "alice",
) -> Any:
    body = request or {
        "dataset": DATASET,
        "purpose": "ai-development",
        "permit": permit(runtime),
        "cohort": {"modality": ["CT"]},
    }
    return client.post(
        "/v1/jobs",
        data={"job": json.dumps(body), "signature": package[1]},
        files={"package": ("model.zip", package[0], "application/zip")},
        headers=headers(runtime, Role.RESEARCHER, user),
    )


def run_queue(runtime: Runtime) -> list[str | None]:
    worker = Worker(runtime, LIMITS)
    states = []
    while (state := worker.run_once()) is not None:
        states.append(state)
    return states


def test_a_signed_job_runs_in_the_sandbox_and_returns_a_signed_result(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    submitted = submit(client, runtime, signed_package)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["state"] == "queued"
    assert run_queue(runtime) == ["succeeded"]
    me = headers(runtime, Role.RESEARCHER)
    status = client.get(f"/v1/jobs/{job_id}", headers=me).json()
    assert status["state"] == "succeeded" and status["studies_total"] == 3 and status["studies_done"] == 3
    token = client.get(f"/v1/jobs/{job_id}/result", headers=me).text
    jwk = client.get("/v1/connector/keys").json()["keys"][0]
    body = verify_result(token, jwk)
    assert body["job"] == job_id and body["model"] == "demo-nodule-classifier@1.0.0"
    assert body["model_digest"] == status["package_digest"] and len(body["cohort_hash"]) == 64
    assert len(body["per_study"]) == 3 and {"no-nodule", "nodule"} == set(body["labels"])
    # No study UID or pseudonym leaves: per-study values are numbered.
    with runtime.sessions() as session:
        identifiers = set(session.execute(select(StudyRecord.study_uid)).scalars()) | set(
            session.execute(select(StudyRecord.patient_pseudonym)).scalars()
        )
    assert not any(identifier in token or identifier in json.dumps(body) for identifier in identifiers)
    # A result altered in transit fails verification.
    head, payload, signature = token.split(".")
    with pytest.raises(ResultError, match="signature"):
        verify_result(f"{head}.{payload[:-4]}AAAA.{signature}", jwk)
    # Only its submitter sees the job.
    other = headers(runtime, Role.RESEARCHER, "mallory")
    assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/result", headers=other).status_code == 404
    audit = [row.action for row in runtime.sessions().execute(select(AuditEntry)).scalars()]
    assert "job.submit" in audit and "job.succeeded" in audit and "policy.release" in audit


def test_bad_submissions_are_refused_before_anything_is_stored(
    client: TestClient,
    runtime: Runtime,
    signed_package: tuple[bytes, str],
    team_key: tuple[bytes, bytes],
) -> None:
    package, signature = signed_package
    tampered = bytearray(package)
    tampered[len(tampered) // 2] ^= 1
    _, foreign_signature = demo_package(generate_team_key("EdDSA")[0], TEAM)
    _, other_package_signature = demo_package(team_key[0], TEAM, seed=1)
    cases = {
        "missing_signature": (package, ""),
        "unknown_key": (package, foreign_signature),
        "digest_mismatch": (package, other_package_signature),
        "invalid_package": (bytes(tampered), signature),
        "malformed_signature": (package, "not.a.jws"),
    }
    for expected, (body, sig) in cases.items():
        refused = submit(client, runtime, (body, sig))
        assert refused.status_code == 422, (expected, refused.text)
        assert refused.json()["error"] == expected, refused.text
    hostile = client.post(
        "/v1/jobs",
        data={"job": '{"dataset": 1, "purpose": "x"}', "signature": signature},
        files={"package": ("model.zip", package, "application/zip")},
        headers=headers(runtime, Role.RESEARCHER),
    )
    assert hostile.status_code == 422 and hostile.json()["problems"]
    with runtime.sessions() as session:
        assert session.execute(select(Job)).first() is None
    assert client.post("/v1/jobs", headers=headers(runtime, Role.STEWARD)).status_code == 403


def test_the_access_policy_denies_with_reasons_and_records_the_denial(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    no_permit = submit(
        client,
        runtime,
        signed_package,
        request={"dataset": DATASET, "purpose": "ai-development", "permit": "not-a-jwt"},
    )
    assert no_permit.status_code == 403 and "permit" in no_permit.json()["detail"]
    too_small = submit(
        client,
        runtime,
        signed_package,
        request={
            "dataset": DATASET,
            "purpose": "ai-development",
            "permit": permit(runtime),
            "cohort": {"sex": ["X"]},
        },
    )
    assert too_small.status_code == 403 and "below the minimum" in too_small.json()["detail"]
    states = [
        view["state"] for view in client.get("/v1/jobs", headers=headers(runtime, Role.RESEARCHER)).json()
    ]
    assert states == ["denied", "denied"]
    assert run_queue(runtime) == []


def pseudonyms(runtime: Runtime) -> list[str]:
    with runtime.sessions() as session:
        return sorted(set(session.execute(select(StudyRecord.patient_pseudonym)).scalars()))


def test_opt_outs_before_the_start_and_during_the_run_leave_the_result(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second, third = pseudonyms(runtime)
    job_id = submit(client, runtime, signed_package).json()["id"]
    import_consent(
        runtime, [{"dataset": DATASET, "pseudonym": first, "status": "opted-out"}], "register", "dpo"
    )
    # The second patient opts out once the run has started.
    original = runner.cohort_inputs
    calls = {"n": 0}

    def opting_out(*args: Any, **kwargs: Any) -> Iterator[Any]:
        calls["n"] += 1
        if calls["n"] == 1:
            import_consent(
                runtime, [{"dataset": DATASET, "pseudonym": second, "status": "opted-out"}], "r", "dpo"
            )
        yield from original(*args, **kwargs)

    monkeypatch.setattr(runner, "cohort_inputs", opting_out)
    monkeypatch.setattr(runner, "CONSENT_RECHECK_SECONDS", 0.0)
    assert run_queue(runtime) == ["failed"]
    job = client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json()
    # Two patients at start (k = 2), one left at the end: per-study results of one patient may not leave.
    assert job["cohort_size"] == 2 and job["error_code"] == "egress_denied" and not job["has_result"]
    assert third not in json.dumps(job)


def test_the_egress_policy_can_refuse_a_result_and_nothing_is_released(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    activate(runtime, egress={"max_result_bytes": 10})
    job_id = submit(client, runtime, signed_package).json()["id"]
    assert run_queue(runtime) == ["failed"]
    job = client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json()
    assert job["error_code"] == "egress_denied" and any("egress" in reason for reason in job["reasons"])
    assert (
        client.get(f"/v1/jobs/{job_id}/result", headers=headers(runtime, Role.RESEARCHER)).status_code == 404
    )


def test_a_queued_job_is_cancelled_and_a_revoked_permit_denies_at_start(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    me = headers(runtime, Role.RESEARCHER)
    cancelled = submit(client, runtime, signed_package).json()["id"]
    assert client.post(f"/v1/jobs/{cancelled}/cancel", headers=me).json()["state"] == "cancelled"
    token = permit(runtime)
    revoked = submit(
        client,
        runtime,
        signed_package,
        request={
            "dataset": DATASET,
            "purpose": "ai-development",
            "permit": token,
            "cohort": {"modality": ["CT"]},
        },
    ).json()["id"]
    permit_id = json.loads(runtime.sessions().get(Job, revoked).access_input)["permit_check"]["claims"][
        "permit_id"
    ]
    runtime.policy.revoke_permit(permit_id, "misuse reported", "hdab")
    runtime.policy.refresh(force=True)
    assert run_queue(runtime) == ["denied"]
    job = client.get(f"/v1/jobs/{revoked}", headers=me).json()
    assert job["state"] == "denied" and all(reason.startswith("at start") for reason in job["reasons"])


def test_two_workers_share_the_queue_and_no_job_runs_twice(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    ids = {submit(client, runtime, signed_package).json()["id"] for _ in range(3)}
    finished: list[tuple[str, str]] = []
    workers = [Worker(runtime, LIMITS, poll_seconds=0.05) for _ in range(2)]
    threads = [
        threading.Thread(target=w.serve, kwargs={"on_job": lambda j, s: finished.append((j, s))})
        for w in workers
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(600):
            if len(finished) >= 3:
                break
            threading.Event().wait(0.1)
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(job for job, _ in finished) == sorted(ids)
    assert all(state == "succeeded" for _, state in finished)
    with runtime.sessions() as session:
        runs = [
            row
            for row in session.execute(
                select(AuditEntry).where(AuditEntry.action == "job.succeeded")
            ).scalars()
        ]
    assert len(runs) == 3


def test_a_job_whose_worker_died_fails_and_releases_nothing(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    job_id = submit(client, runtime, signed_package).json()["id"]
    assert runner.claim_next(runtime, "worker-that-dies") == job_id
    with runtime.sessions() as session, session.begin():
        session.get(Job, job_id).lease_until = 0.0  # type: ignore[union-attr]
    assert fail_abandoned(runtime) == 1
    job = client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json()
    assert job["state"] == "failed" and job["error_code"] == "worker_lost" and not job["has_result"]


def test_a_permit_that_expires_before_the_start_denies_the_job(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    job_id = submit(client, runtime, signed_package).json()["id"]
    with runtime.sessions() as session, session.begin():
        session.get(Job, job_id).permit_expires = 1  # type: ignore[union-attr]
    assert run_queue(runtime) == ["denied"]
    job = client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json()
    assert job["error_code"] == "permit_expired" and not job["has_result"]


def test_each_decision_on_a_job_is_audited_with_its_model_and_cohort(
    client: TestClient, runtime: Runtime, signed_package: tuple[bytes, str]
) -> None:
    job_id = submit(client, runtime, signed_package).json()["id"]
    assert run_queue(runtime) == ["succeeded"]
    with runtime.sessions() as session:
        entries = {
            row.action: json.loads(row.details)
            for row in session.execute(select(AuditEntry).where(AuditEntry.object == job_id)).scalars()
        }
    digest = client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json()[
        "package_digest"
    ]
    for action in ("job.decision.access", "job.decision.release"):
        assert entries[action]["model_digest"] == digest
        assert len(entries[action]["cohort_hash"]) == 64 and entries[action]["policy_version"]
