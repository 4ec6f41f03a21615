"""Activated policy versions in the database: the active one, the history, one by number.

Every activation (a rollback too) is a new row holding the whole bundle, so the history shows
exactly what was in force when. This module stores and reads; it never checks or evaluates.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import utc_now_text
from connector.db.engine import transaction
from connector.policy.bundle import PolicyBundle
from connector.policy.models import PolicyVersion


@dataclass(frozen=True)
class VersionInfo:
    version: int
    digest: str
    activated_at: str
    activated_by: str
    note: str

    @property
    def label(self) -> str:
        """How decisions name the policy in force: `v3` (its digest is in the audit details)."""
        return f"v{self.version}"

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "label": self.label,
            "digest": self.digest,
            "activated_at": self.activated_at,
            "activated_by": self.activated_by,
            "note": self.note,
        }


def _info(row: PolicyVersion) -> VersionInfo:
    return VersionInfo(row.version, row.digest, row.activated_at, row.activated_by, row.note)


def active_version(sessions: sessionmaker[Session]) -> VersionInfo | None:
    with sessions() as session:
        row = session.execute(select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(1)).scalar()
        return _info(row) if row is not None else None


def active_version_number(sessions: sessionmaker[Session]) -> int | None:
    with sessions() as session:
        value: int | None = session.execute(select(func.max(PolicyVersion.version))).scalar()
        return value


def load_version(sessions: sessionmaker[Session], version: int) -> tuple[VersionInfo, PolicyBundle]:
    with sessions() as session:
        row = session.get(PolicyVersion, version)
        if row is None:
            raise LookupError(f"there is no policy version {version}")
        return _info(row), PolicyBundle.from_json(row.bundle)


def record_activation(
    sessions: sessionmaker[Session], bundle: PolicyBundle, actor: str, note: str
) -> VersionInfo:
    with transaction(sessions) as session:
        row = PolicyVersion(
            digest=bundle.digest,
            bundle=bundle.to_json(),
            activated_at=utc_now_text(),
            activated_by=actor[:200],
            note=note,
        )
        session.add(row)
        session.flush()
        return _info(row)


def history(sessions: sessionmaker[Session], limit: int = 50) -> list[VersionInfo]:
    with sessions() as session:
        rows = session.execute(select(PolicyVersion).order_by(PolicyVersion.version.desc()).limit(limit))
        return [_info(row) for row in rows.scalars()]
