"""The audit log service: append entries, sign checkpoints, query, export and verify the chain.

Appends are serialised on the `audit_head` row (an UPDATE takes its lock first on SQLite and
PostgreSQL alike), so several API workers never fork the chain. It must never write PHI, tokens or
keys into an entry: callers pass identifiers and reasons only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.chain import GENESIS_HASH, AuditRecord, canonical_json, checkpoint_message
from connector.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from connector.crypto.signing import ConnectorSigningKey
from connector.db.engine import transaction
from connector.observability.context import request_id_var


def utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Verification:
    """What `verify` found: ok, or the first bad entry and what is wrong with it."""

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None


def _record(row: AuditEntry) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        ts=row.ts,
        actor=row.actor,
        actor_roles=row.actor_roles,
        action=row.action,
        object=row.object,
        outcome=row.outcome,
        reasons=row.reasons,
        details=row.details,
        request_id=row.request_id,
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


class AuditLog:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        signer: ConnectorSigningKey,
        connector_id: str,
        checkpoint_every: int,
    ) -> None:
        self._sessions = sessions
        self._signer = signer
        self._connector_id = connector_id
        self._checkpoint_every = checkpoint_every

    def record(
        self,
        actor: str,
        action: str,
        object: str,
        outcome: str,
        reasons: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
        roles: Iterable[str] = (),
    ) -> AuditRecord:
        """Append one entry and return it; checkpoints are signed every `checkpoint_every` entries."""
        with transaction(self._sessions) as session:
            seq, prev_hash = session.execute(
                update(AuditHead)
                .where(AuditHead.id == 1)
                .values(seq=AuditHead.seq + 1)
                .returning(AuditHead.seq, AuditHead.entry_hash)
            ).one()
            unsigned = AuditRecord(
                seq=seq,
                ts=utc_now_text(),
                actor=actor,
                actor_roles=",".join(sorted(str(role) for role in roles)),
                action=action,
                object=object,
                outcome=outcome,
                reasons=canonical_json(list(reasons)),
                details=canonical_json(dict(details or {})),
                request_id=request_id_var.get(),
                prev_hash=prev_hash,
                entry_hash="",
            )
            entry_hash = unsigned.computed_hash()
            session.add(AuditEntry(**{**unsigned.__dict__, "entry_hash": entry_hash}))
            session.execute(update(AuditHead).where(AuditHead.id == 1).values(entry_hash=entry_hash))
            if seq % self._checkpoint_every == 0:
                self._add_checkpoint(session, seq, entry_hash)
        return AuditRecord(**{**unsigned.__dict__, "entry_hash": entry_hash})

    def checkpoint(self) -> tuple[int, str] | None:
        """Sign the current head now (e.g. at shutdown or before a backup); None when the log is empty."""
        with transaction(self._sessions) as session:
            head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
            if head.seq == 0:
                return None
            if session.get(AuditCheckpoint, head.seq) is None:
                self._add_checkpoint(session, head.seq, head.entry_hash)
            return head.seq, head.entry_hash

    def _add_checkpoint(self, session: Session, seq: int, entry_hash: str) -> None:
        signed_at = utc_now_text()
        signature = self._signer.sign(checkpoint_message(self._connector_id, seq, entry_hash, signed_at))
        session.add(
            AuditCheckpoint(
                seq=seq,
                entry_hash=entry_hash,
                signed_at=signed_at,
                key_id=self._signer.key_id,
                signature=signature,
            )
        )

    def query(
        self,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int | None = 100,
    ) -> list[AuditRecord]:
        """Entries in chain order matching every given filter (times as ISO-8601 UTC text)."""
        return list(self.iter_entries(actor, action, since, until, after_seq, limit))

    def iter_entries(
        self,
        actor: str | None = None,
        action: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[AuditRecord]:
        statement = select(AuditEntry).where(AuditEntry.seq > after_seq).order_by(AuditEntry.seq)
        if actor:
            statement = statement.where(AuditEntry.actor == actor)
        if action:
            # A trailing '*' selects a family of actions, e.g. 'auth.*'.
            if action.endswith("*"):
                statement = statement.where(AuditEntry.action.startswith(action[:-1], autoescape=True))
            else:
                statement = statement.where(AuditEntry.action == action)
        if since:
            statement = statement.where(AuditEntry.ts >= since)
        if until:
            statement = statement.where(AuditEntry.ts < until)
        if limit is not None:
            statement = statement.limit(limit)
        with self._sessions() as session:
            for row in session.execute(statement.execution_options(yield_per=1000)).scalars():
                yield _record(row)

    def verify(self) -> Verification:
        """Walk the whole chain; name the first entry that was edited, deleted, inserted or reordered."""
        expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
        bad: tuple[int, str] | None = None
        for record in self.iter_entries():
            if record.seq != expected_seq:
                bad = (
                    expected_seq,
                    f"entry {expected_seq} is missing (the next stored entry is {record.seq})",
                )
                break
            if record.computed_hash() != record.entry_hash:
                bad = (record.seq, f"entry {record.seq} was modified: its content does not match its hash")
                break
            if record.prev_hash != prev_hash:
                bad = (
                    record.seq,
                    f"entry {record.seq} does not follow entry {record.seq - 1}: reordered or replaced",
                )
                break
            prev_hash, expected_seq, checked = record.entry_hash, expected_seq + 1, checked + 1
        last_seq = expected_seq - 1
        if bad is None:
            bad = self._check_head(last_seq, prev_hash)
        checkpoints = 0
        if bad is None:
            checkpoints, bad = self._check_checkpoints(last_seq)
        if bad is not None:
            return Verification(False, checked, checkpoints, last_seq, bad[0], bad[1])
        return Verification(True, checked, checkpoints, last_seq)

    def _check_head(self, last_seq: int, last_hash: str) -> tuple[int, str] | None:
        with self._sessions() as session:
            head = session.get(AuditHead, 1)
        if head is None:
            return (last_seq + 1, "the chain head is missing")
        if head.seq != last_seq or head.entry_hash != last_hash:
            return (last_seq + 1, f"entries after {last_seq} were deleted: the chain head is at {head.seq}")
        return None

    def _check_checkpoints(self, last_seq: int) -> tuple[int, tuple[int, str] | None]:
        count = 0
        with self._sessions() as session:
            for cp in session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars():
                message = checkpoint_message(self._connector_id, cp.seq, cp.entry_hash, cp.signed_at)
                if cp.key_id != self._signer.key_id or not self._signer.verify(message, cp.signature):
                    return count, (cp.seq, f"checkpoint at entry {cp.seq} has an invalid signature")
                if cp.seq > last_seq:
                    return count, (
                        last_seq + 1,
                        f"entries after {last_seq} were deleted: a signed checkpoint covers {cp.seq}",
                    )
                entry = session.get(AuditEntry, cp.seq)
                if entry is None or entry.entry_hash != cp.entry_hash:
                    return count, (
                        cp.seq,
                        f"entry {cp.seq} differs from the signed checkpoint: the chain was rewritten",
                    )
                count += 1
        return count, None
