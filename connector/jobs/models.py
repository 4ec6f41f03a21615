"""The jobs table: one row per compute-to-data job, its state, progress and released result.

The queue is this table: workers claim a queued row with a compare-and-set update, so several
workers (GPUs, nodes) share it without running a job twice. A row never holds a pseudonym, a
study UID or the raw data permit; the access input kept for the start decision holds only what
the permit's signature check found.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base
from connector.jobs.schemas import FINAL_STATES, JobState

STATES = tuple(JobState)
__all__ = ["FINAL_STATES", "STATES", "Job", "JobState", "ReleaseBudget"]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_created", "state", "created_at"),
        Index("ix_jobs_submitter_created", "submitter", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    submitter: Mapped[str] = mapped_column(String(200))
    organisation: Mapped[str] = mapped_column(String(200))
    country: Mapped[str] = mapped_column(String(2))
    dataset: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(64))
    cohort_filter: Mapped[str] = mapped_column(Text)  # JSON of CohortFilter fields
    access_input: Mapped[str] = mapped_column(Text)  # JSON: the access decision's input, no raw permit
    permit_expires: Mapped[int | None] = mapped_column(Integer, nullable=True)  # epoch seconds
    package_key: Mapped[str] = mapped_column(String(200))
    package_digest: Mapped[str] = mapped_column(String(64))
    team: Mapped[str] = mapped_column(String(200))
    team_key_id: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(100))  # name@version from the manifest
    batch_size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # a JobState's value
    reasons: Mapped[str] = mapped_column(Text, default="[]")  # JSON list: decisions or the failure
    error_code: Mapped[str] = mapped_column(String(40), default="")
    policy_version: Mapped[str] = mapped_column(String(40), default="")
    cohort_hash: Mapped[str] = mapped_column(String(64), default="")
    cohort_size: Mapped[int] = mapped_column(Integer, default=0)  # patients at start
    studies_total: Mapped[int] = mapped_column(Integer, default=0)
    studies_done: Mapped[int] = mapped_column(Integer, default=0)
    studies_skipped: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str] = mapped_column(String(100), default="")
    lease_until: Mapped[float] = mapped_column(default=0.0)  # epoch seconds; a live worker renews it
    created_at: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[str] = mapped_column(String(32), default="")
    finished_at: Mapped[str] = mapped_column(String(32), default="")
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # the signed result (JWS)
    # The DSP contract agreement a peer's job runs under ("" for jobs of local researchers).
    agreement_id: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ReleaseBudget(Base):
    """Numbers released to one team from one dataset, ever: the egress policy compares it with the
    dataset's max_released_numbers. Charged in the same transaction that marks a job's release;
    a row is only ever increased (a DPO raises the limit in the policy, never lowers `used`)."""

    __tablename__ = "release_budgets"

    team: Mapped[str] = mapped_column(String(200), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    releases: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[str] = mapped_column(String(32), default="")
