"""One declaration of a job as it is read: the jobs service's views, the API's response model and
the Python client's parsed answer are the same pydantic model (connector.jobs.schemas.JobRead), so
a job stored once reads the same through all three; job and DSP process states are StrEnums whose
values are the ones stored and sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from connector import client as client_module
from connector.api.app import create_app
from connector.client import ConnectorClient, ConnectorError
from connector.dataspace.states import (
    NEGOTIATION_FINAL,
    TRANSFER_FINAL,
    NegotiationState,
    TransferState,
    next_negotiation_state,
    next_transfer_state,
)
from connector.identity.roles import Role
from connector.jobs import service
from connector.jobs.models import Job
from connector.jobs.schemas import FINAL_STATES, JobRead, JobState
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(data_dir=tmp_path / "data"))
    yield built
    built.close()


def store_job(runtime: Runtime, job_id: str, state: JobState) -> None:
    with runtime.sessions() as session, session.begin():
        session.add(
            Job(
                id=job_id,
                submitter="alice",
                organisation="Uni Leuven AI Lab",
                country="BE",
                dataset="screening-ct",
                purpose="ai-development",
                cohort_filter="{}",
                access_input="{}",
                package_key="models/abc.zip",
                package_digest="ab" * 32,
                team="leuven-ai-lab",
                team_key_id="key-1",
                model="demo-model@1.0.0",
                batch_size=4,
                state=state,
                reasons=json.dumps(["at start: k = 2 met"]),
                policy_version="v3",
                cohort_size=3,
                studies_total=3,
                studies_done=2,
                studies_skipped=1,
                created_at="2026-01-02T03:04:05Z",
                started_at="2026-01-02T03:04:06Z",
            )
        )


def test_service_router_and_client_read_a_job_through_one_model(runtime: Runtime) -> None:
    store_job(runtime, "a" * 32, JobState.RUNNING)
    with runtime.sessions() as session:  # the stored value is the state's plain string
        row = session.get(Job, "a" * 32)
        assert row is not None and row.state == "running"

    view = service.get_job(runtime, "a" * 32)
    assert type(view) is JobRead and view.state is JobState.RUNNING

    app = create_app(runtime)
    routes = {
        (route.path, method): route
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    for key in [("/v1/jobs", "POST"), ("/v1/jobs/{job_id}", "GET"), ("/v1/jobs/{job_id}/cancel", "POST")]:
        assert routes[key].response_model is JobRead, key
    assert routes[("/v1/jobs", "GET")].response_model == list[JobRead]
    assert client_module.Job is JobRead

    assert runtime.dev_issuer is not None
    token = runtime.dev_issuer.issue(
        "alice", [Role.RESEARCHER], organisation="Uni Leuven AI Lab", country="BE"
    )
    with TestClient(app) as http:
        answer = http.get(f"/v1/jobs/{'a' * 32}", headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        parsed = ConnectorClient("http://testserver", token, client=http).job("a" * 32)

    # The same fields, names and JSON types everywhere: the API's answer is the view's JSON, and
    # the client's parse of it is the service's view.
    assert answer.json() == view.to_json()
    assert list(answer.json()) == list(JobRead.model_fields)
    assert answer.json()["state"] == "running" and answer.json()["reasons"] == ["at start: k = 2 met"]
    assert parsed == view
    assert not parsed.final and parsed.studies_skipped == 1 and parsed.has_result is False


def test_the_client_reads_older_and_newer_answers_and_refuses_a_job_less_one() -> None:
    newer = {"id": "b" * 32, "state": "succeeded", "dataset": None, "added_later": {"x": 1}}
    job = JobRead.from_json(newer)
    assert job.final and job.dataset == "" and job.reasons == () and job.studies_total == 0
    assert job.to_json()["state"] == "succeeded" and "added_later" not in job.to_json()

    with pytest.raises(ConnectorError) as caught:
        client_module._job({"id": "c" * 32})
    assert caught.value.code == "bad_response" and "state" in caught.value.detail


def test_states_keep_the_values_stored_and_sent() -> None:
    assert [state.value for state in JobState] == [
        "queued", "running", "succeeded", "failed", "cancelled", "denied"
    ]
    assert {"succeeded", "failed", "cancelled", "denied"} == FINAL_STATES
    assert [state.value for state in NegotiationState] == [
        "INITIAL", "REQUESTED", "OFFERED", "ACCEPTED", "AGREED", "VERIFIED", "FINALIZED", "TERMINATED"
    ]
    assert [state.value for state in TransferState] == [
        "INITIAL", "REQUESTED", "STARTED", "SUSPENDED", "COMPLETED", "TERMINATED"
    ]
    assert {"FINALIZED", "TERMINATED"} == NEGOTIATION_FINAL and {"COMPLETED", "TERMINATED"} == TRANSFER_FINAL
    # A state read back from a row (a plain string) moves like the enum, and the next one is a member.
    moved = next_negotiation_state("VERIFIED", "FINALIZED", "provider")
    assert moved is NegotiationState.FINALIZED and json.dumps(moved) == '"FINALIZED"'
    assert next_transfer_state("REQUESTED", "TransferStartMessage", "provider") is TransferState.STARTED
    assert f"job.{JobState.DENIED}" == "job.denied"  # the audit action's text
