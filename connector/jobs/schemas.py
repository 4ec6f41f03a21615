"""A job as it is read: its states and its one read model, shared by the jobs service (its views),
the API (the response model) and the Python client (the parsed answer).

Kept apart from connector.jobs.models (the table) so the client can import it without loading
SQLAlchemy or the server's settings: this module needs pydantic and the standard library only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class JobState(StrEnum):
    """A job's state, as stored in the jobs table and sent over the API (the values never change)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DENIED = "denied"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.DENIED})


class JobRead(BaseModel):
    """A job's state and progress as its submitter sees it (never a pseudonym, study or permit).

    Fields the server adds later are ignored, and a field it leaves out or sends as null reads as
    empty (0, "", no reasons), so a client parses the answers of older and newer connectors.
    """

    # Every field is in every answer: the response schema marks them all required.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)

    id: str
    state: JobState
    dataset: str = ""
    purpose: str = ""
    model: str = ""  # name@version from the manifest
    package_digest: str = ""
    reasons: tuple[str, ...] = ()  # the policy's reasons, or why the job failed
    error_code: str = ""
    policy_version: str = ""
    cohort_size: int = 0
    studies_total: int = 0
    studies_done: int = 0
    studies_skipped: int = 0
    created_at: str = ""
    started_at: str = ""  # "" until it happens
    finished_at: str = ""
    has_result: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_empty(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {name: value for name, value in data.items() if value is not None}
        return data

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, document: Any) -> JobRead:
        """A job from the API's JSON (a pydantic ValidationError when it is not one)."""
        return cls.model_validate(document)

    def to_json(self) -> dict[str, Any]:
        """The JSON document the API sends for this job."""
        return self.model_dump(mode="json")
