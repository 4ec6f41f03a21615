"""Helpers for the policy tests: a dataset index written straight into the database, requests.

The index rows are what ingest writes (a dataset, its studies by pseudonym); writing them directly
lets a test build a cohort of any size in milliseconds. Nothing here stands in for the engine.
"""

from __future__ import annotations

import copy
from typing import Any

from connector.audit.log import utc_now_text
from connector.datasets.models import DatasetRecord, StudyRecord
from connector.db.engine import transaction
from connector.runtime import Runtime


def add_dataset(runtime: Runtime, name: str, pseudonyms: list[str]) -> None:
    with transaction(runtime.sessions) as session:
        session.add(
            DatasetRecord(name=name, created_at=utc_now_text(), profile="basic", options="[]", store="local")
        )
        session.flush()
        for index, pseudonym in enumerate(pseudonyms):
            session.add(
                StudyRecord(
                    dataset=name,
                    study_uid=f"2.25.{index + 1}",
                    patient_pseudonym=pseudonym,
                    wrapped_key="{}",
                    key_id="k1",
                    modalities="CT",
                    body_part="CHEST",
                    sex="F",
                    age_band="60-69",
                    study_year="2024",
                    manufacturer="ACME",
                )
            )


ACCESS: dict[str, Any] = {
    "action": "access",
    "dataset": "demo-cohort",
    "purpose": "ai-development",
    "requester": {"id": "alice", "organisation": "Uni Leuven AI Lab", "country": "DE"},
    "permit": None,
    "cohort": {"size": 20},
}


def access_request(**changes: Any) -> dict[str, Any]:
    request = copy.deepcopy(ACCESS)
    for key, value in changes.items():
        if key in ("id", "organisation", "country"):
            request["requester"][key] = value
        elif key == "size":
            request["cohort"]["size"] = value
        else:
            request[key] = value
    return request


def permit_for(runtime: Runtime, **changes: Any) -> str:
    assert runtime.permit_issuer is not None
    arguments: dict[str, Any] = {
        "requester": "alice",
        "organisation": "Uni Leuven AI Lab",
        "purposes": ["ai-development"],
        "datasets": ["demo-cohort"],
        "countries": ["DE"],
    }
    arguments.update(changes)
    return runtime.permit_issuer.issue(**arguments)
