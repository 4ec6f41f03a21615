"""Tables of the policy domain: activated policy versions, pending activations (four eyes), the consent
registry, revoked permits.

The consent registry holds only per-dataset pseudonyms, never a patient's hospital identifier.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base


class PolicyVersion(Base):
    """One activation: the whole bundle as it was activated. The highest version is the active one."""

    __tablename__ = "policy_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64))
    bundle: Mapped[str] = mapped_column(Text)  # JSON of file name -> text
    activated_at: Mapped[str] = mapped_column(String(32))
    activated_by: Mapped[str] = mapped_column(String(200))
    note: Mapped[str] = mapped_column(Text, default="")


class ConsentRecord(Base):
    """The latest consent state of one patient (by pseudonym) in one dataset."""

    __tablename__ = "consent_records"
    __table_args__ = (UniqueConstraint("dataset", "pseudonym"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    pseudonym: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # opted-out | withdrawn | consented
    source: Mapped[str] = mapped_column(String(200), default="")
    recorded_at: Mapped[str] = mapped_column(String(32))
    recorded_by: Mapped[str] = mapped_column(String(200))


class RevokedPermit(Base):
    __tablename__ = "revoked_permits"

    permit_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    revoked_at: Mapped[str] = mapped_column(String(32))
    revoked_by: Mapped[str] = mapped_column(String(200))


class PolicyApproval(Base):
    """An activation requested in production mode, waiting for a second DPO (four eyes).

    The bundle is kept whole, so the approver approves exactly the digest that was requested.
    """

    __tablename__ = "policy_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64))
    bundle: Mapped[str] = mapped_column(Text)  # JSON of file name -> text
    requested_at: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(200))
    note: Mapped[str] = mapped_column(Text, default="")
    replay: Mapped[str] = mapped_column(Text, default="{}")  # JSON: what the replay of recent decisions found
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | approved | rejected | refused
    decided_at: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decision_note: Mapped[str] = mapped_column(Text, default="")
