"""Patients a dataset must refuse: crypto-shredded or erased ones, remembered by keyed pseudonym.

A patient-level shred (and an erasure after an opt-out) records the patient's pseudonym here, so a
later ingest of their studies (any path: they all end in `connector.datasets.ingest.ingest`) is
refused instead of silently re-admitting them. Only an explicit, audited readmission lifts it.

What it must never do: store a hospital identifier (pseudonyms only: the dataset's keyed HMAC),
or lift a refusal without an audit entry and a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import utc_now_text
from connector.datasets.models import RefusedPatient

if TYPE_CHECKING:
    from connector.runtime import Runtime

# A pseudonym lookup stays one indexed query per this many values (bounded bind parameters).
_CHUNK = 500


@dataclass(frozen=True)
class Refusal:
    dataset: str
    pseudonym: str
    reason: str
    recorded_at: str
    recorded_by: str


def remember(session: Session, dataset: str, pseudonyms: Iterable[str], reason: str, actor: str) -> int:
    """Record the patients as refused inside the caller's transaction; returns how many are new.

    Idempotent: a patient already refused keeps their first record (the first erasure is the one
    that counts).
    """
    wanted = sorted(set(pseudonyms))
    known = refused_among(session, dataset, wanted)
    now = utc_now_text()
    for pseudonym in wanted:
        if pseudonym not in known:
            session.add(
                RefusedPatient(
                    dataset=dataset,
                    pseudonym=pseudonym,
                    reason=reason[:200],
                    recorded_at=now,
                    recorded_by=actor[:200],
                )
            )
    session.flush()
    return len(set(wanted) - known)


def refused_among(session: Session, dataset: str, pseudonyms: Iterable[str]) -> set[str]:
    """Those of `pseudonyms` that `dataset` refuses."""
    wanted = list(dict.fromkeys(pseudonyms))
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        found.update(
            session.execute(
                select(RefusedPatient.pseudonym).where(
                    RefusedPatient.dataset == dataset, RefusedPatient.pseudonym.in_(chunk)
                )
            ).scalars()
        )
    return found


def refused_pseudonyms(sessions: sessionmaker[Session], dataset: str) -> frozenset[str]:
    """Every patient `dataset` refuses (read once per ingest run)."""
    with sessions() as session:
        query = select(RefusedPatient.pseudonym).where(RefusedPatient.dataset == dataset)
        return frozenset(session.execute(query).scalars())


def list_refusals(sessions: sessionmaker[Session], dataset: str | None = None) -> list[Refusal]:
    query = select(RefusedPatient).order_by(RefusedPatient.dataset, RefusedPatient.pseudonym)
    if dataset:
        query = query.where(RefusedPatient.dataset == dataset)
    with sessions() as session:
        return [
            Refusal(row.dataset, row.pseudonym, row.reason, row.recorded_at, row.recorded_by)
            for row in session.execute(query).scalars()
        ]


def forget_dataset(session: Session, dataset: str) -> None:
    """A whole-dataset shred: its pseudonym secret is gone, so are the pseudonyms it refused."""
    session.execute(delete(RefusedPatient).where(RefusedPatient.dataset == dataset))


def readmit(runtime: Runtime, dataset: str, pseudonym: str, reason: str, actor: str) -> Refusal:
    """Lift a refusal (audited, with its reason): the patient's studies may be ingested again.

    LookupError when the patient is not refused; ValueError without a reason. Their consent
    record is untouched: an opted-out patient stays out of cohorts until the registry says otherwise.
    """
    reason = reason.strip()
    if not reason:
        raise ValueError("give the reason for readmitting an erased patient (it is audited)")
    with runtime.sessions() as session, session.begin():
        row = session.get(RefusedPatient, (dataset, pseudonym))
        if row is None:
            raise LookupError(f"dataset {dataset!r} does not refuse patient {pseudonym!r}")
        lifted = Refusal(row.dataset, row.pseudonym, row.reason, row.recorded_at, row.recorded_by)
        session.delete(row)
    runtime.audit.record(
        actor,
        "dataset.readmit",
        dataset,
        "success",
        reasons=[reason[:500]],
        details={"patient": pseudonym, "refused_since": lifted.recorded_at, "refused_for": lifted.reason},
    )
    return lifted
