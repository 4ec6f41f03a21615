"""The audit log service: append entries, sign checkpoints, query, export and verify the chain.

Appends are serialised on the `audit_head` row (an UPDATE takes its lock first on SQLite and
PostgreSQL alike), so several API workers never fork the chain. It must never write PHI, tokens or
keys into an entry: callers pass identifiers and reasons only.

A DBA can rewrite every row and recompute the chain, so the recorder signs a checkpoint at every
multiple of `checkpoint_every` and whenever `checkpoint_seconds` passed since the last one (in the
entry's own transaction), and copies each signed head outside the database (heads file, witness)
after the commit. `verify` reports a missing required checkpoint and any disagreement with the copies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.chain import GENESIS_HASH, AuditRecord, canonical_json, checkpoint_message
from connector.audit.heads import HeadsFile, HeadsRead, SignedHead, Witness
from connector.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from connector.crypto.signing import ConnectorSigningKey
from connector.db.engine import transaction
from connector.observability.context import request_id_var

log = logging.getLogger("connector.audit")

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_PROBLEMS = 50  # a trail with every checkpoint deleted would otherwise list thousands


def utc_now_text() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def _epoch(text: str) -> float | None:
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Problem:
    """One way the trail disagrees with itself or with its signed copies (`code` is machine-readable)."""

    code: str
    seq: int
    message: str


@dataclass(frozen=True)
class Verification:
    """What `verify` found: ok, or the first bad entry and what is wrong with it (and every other problem)."""

    ok: bool
    entries_checked: int
    checkpoints_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None
    code: str | None = None
    heads_checked: int = 0  # signed heads of the heads file that match the database
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


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
        checkpoint_seconds: float | None = None,
        heads_file: HeadsFile | None = None,
        witness: Witness | None = None,
    ) -> None:
        self._sessions = sessions
        self._signer = signer
        self._connector_id = connector_id
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self.heads_file = heads_file
        self.witness = witness
        # When the newest checkpoint was signed (epoch seconds), as this process last saw it; None = not read.
        self._last_checkpoint_at: float | None = None

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
        """Append one entry and return it; a checkpoint is signed every `checkpoint_every` entries and
        when `checkpoint_seconds` passed since the last one."""
        signed: SignedHead | None = None
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
            if seq % self._checkpoint_every == 0 or self._timer_due(session, seq):
                signed = self._add_checkpoint(session, seq, entry_hash)
        if signed is not None:
            self._publish(signed)  # after the commit: the copies never name a head the database rolled back
        return AuditRecord(**{**unsigned.__dict__, "entry_hash": entry_hash})

    def _timer_due(self, session: Session, seq: int) -> bool:
        """Whether `checkpoint_seconds` passed since the newest checkpoint (caller holds the head lock)."""
        if self._checkpoint_seconds is None or seq == 1:  # the clock starts at the first entry
            return False
        now = time.time()
        last = self._last_checkpoint_at
        if last is None or now - last >= self._checkpoint_seconds:
            # Re-read only when it looks due: another worker may have signed since (cheap, rare).
            last = self._newest_checkpoint_time(session) or now
            self._last_checkpoint_at = last
        return now - last >= self._checkpoint_seconds

    @staticmethod
    def _newest_checkpoint_time(session: Session) -> float | None:
        signed_at = session.execute(
            select(AuditCheckpoint.signed_at).order_by(AuditCheckpoint.seq.desc()).limit(1)
        ).scalar_one_or_none()
        if signed_at is None:
            # No checkpoint yet: the clock runs from the first entry.
            signed_at = session.execute(select(AuditEntry.ts).where(AuditEntry.seq == 1)).scalar_one_or_none()
        return _epoch(signed_at) if signed_at else None

    def _publish(self, head: SignedHead) -> None:
        """Copy a committed signed head outside the database; a failure is logged, never raised."""
        if self.heads_file is not None:
            try:
                self.heads_file.append(head)
            except OSError:
                log.exception("could not append the signed audit head", extra={"seq": head.seq})
        if self.witness is not None:
            self.witness.submit(head)

    def checkpoint(self) -> tuple[int, str] | None:
        """Sign the current head now (e.g. at shutdown or before a backup); None when the log is empty."""
        signed: SignedHead | None = None
        with transaction(self._sessions) as session:
            head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
            if head.seq == 0:
                return None
            if session.get(AuditCheckpoint, head.seq) is None:
                signed = self._add_checkpoint(session, head.seq, head.entry_hash)
            result = head.seq, head.entry_hash
        if signed is not None:
            self._publish(signed)
        return result

    def _add_checkpoint(self, session: Session, seq: int, entry_hash: str) -> SignedHead:
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
        self._last_checkpoint_at = time.time()
        return SignedHead(seq, entry_hash, signed_at, self._signer.key_id, signature)

    def close(self, timeout: float = 2.0) -> None:
        """Let the witness finish its pushes (bounded: a dead witness never holds a shutdown long)."""
        if self.witness is not None:
            self.witness.close(timeout)

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
        """Walk the whole chain and compare it with its signed checkpoints and the heads kept outside.

        Problems are listed by seq; the first is the one reported. A break in the chain makes everything
        after it untrustworthy, so later anchors are then only checked up to the break.
        """
        problems: list[Problem] = []
        with self._sessions() as session:
            checkpoints = list(
                session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars()
            )
        heads_read = self.heads_file.read() if self.heads_file is not None else None
        file_heads = heads_read.heads if heads_read is not None else []
        anchors = {cp.seq for cp in checkpoints} | {head.seq for head in file_heads}
        # Hashes of the chain at the anchored positions, collected during the one pass over the entries.
        hashes: dict[int, str] = {}

        expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
        for record in self.iter_entries():
            if record.seq != expected_seq:
                problems.append(
                    Problem(
                        "entry_missing",
                        expected_seq,
                        f"entry {expected_seq} is missing (the next stored entry is {record.seq})",
                    )
                )
                break
            if record.computed_hash() != record.entry_hash:
                problems.append(
                    Problem(
                        "entry_modified",
                        record.seq,
                        f"entry {record.seq} was modified: its content does not match its hash",
                    )
                )
                break
            if record.prev_hash != prev_hash:
                problems.append(
                    Problem(
                        "entry_out_of_order",
                        record.seq,
                        f"entry {record.seq} does not follow entry {record.seq - 1}: reordered or replaced",
                    )
                )
                break
            if record.seq in anchors:
                hashes[record.seq] = record.entry_hash
            prev_hash, expected_seq, checked = record.entry_hash, expected_seq + 1, checked + 1
        last_seq = expected_seq - 1
        chain_intact = not problems
        if chain_intact:
            problems += self._check_head(last_seq, prev_hash)

        checkpoints_ok, checkpoint_problems = self._check_checkpoints(
            checkpoints, hashes, last_seq, chain_intact
        )
        problems += checkpoint_problems
        problems += self._check_required(checkpoints, last_seq)
        heads_ok, head_problems, warnings = self._check_heads_file(
            heads_read, hashes, last_seq, chain_intact, has_checkpoints=bool(checkpoints)
        )
        problems += head_problems

        if not problems:
            return Verification(
                True, checked, checkpoints_ok, last_seq, heads_checked=heads_ok, warnings=warnings
            )
        problems.sort(key=lambda problem: problem.seq)  # stable: at one seq, the earlier check wins
        first = problems[0]
        return Verification(
            False,
            checked,
            checkpoints_ok,
            last_seq,
            first.seq,
            first.message,
            first.code,
            heads_ok,
            tuple(problems[:MAX_PROBLEMS]),
            warnings,
        )

    def _check_head(self, last_seq: int, last_hash: str) -> list[Problem]:
        with self._sessions() as session:
            head = session.get(AuditHead, 1)
        if head is None:
            return [Problem("head_missing", last_seq + 1, "the chain head is missing")]
        if head.seq != last_seq or head.entry_hash != last_hash:
            return [
                Problem(
                    "tail_deleted",
                    last_seq + 1,
                    f"entries after {last_seq} were deleted: the chain head is at {head.seq}",
                )
            ]
        return []

    def _signature_ok(self, seq: int, entry_hash: str, signed_at: str, key_id: str, signature: str) -> bool:
        message = checkpoint_message(self._connector_id, seq, entry_hash, signed_at)
        return key_id == self._signer.key_id and self._signer.verify(message, signature)

    def _check_checkpoints(
        self, checkpoints: list[AuditCheckpoint], hashes: dict[int, str], last_seq: int, chain_intact: bool
    ) -> tuple[int, list[Problem]]:
        count = 0
        for cp in checkpoints:
            if not chain_intact and cp.seq > last_seq:
                break  # the chain break is already reported; nothing after it can be compared
            if not self._signature_ok(cp.seq, cp.entry_hash, cp.signed_at, cp.key_id, cp.signature):
                return count, [
                    Problem(
                        "checkpoint_signature_invalid",
                        cp.seq,
                        f"checkpoint at entry {cp.seq} has an invalid signature",
                    )
                ]
            if cp.seq > last_seq:
                return count, [
                    Problem(
                        "checkpoint_beyond_chain",
                        last_seq + 1,
                        f"entries after {last_seq} were deleted: a signed checkpoint covers {cp.seq}",
                    )
                ]
            if hashes.get(cp.seq) != cp.entry_hash:
                return count, [
                    Problem(
                        "checkpoint_mismatch",
                        cp.seq,
                        f"entry {cp.seq} differs from the signed checkpoint: the chain was rewritten",
                    )
                ]
            count += 1
        return count, []

    def _check_required(self, checkpoints: list[AuditCheckpoint], last_seq: int) -> list[Problem]:
        """Every multiple of `checkpoint_every` must have its checkpoint: the recorder never skips one."""
        present = {cp.seq for cp in checkpoints}
        every = self._checkpoint_every
        return [
            Problem(
                "checkpoint_missing",
                seq,
                f"the signed checkpoint required at entry {seq} is missing: checkpoints were deleted",
            )
            for seq in range(every, last_seq + 1, every)
            if seq not in present
        ][:MAX_PROBLEMS]

    def _check_heads_file(
        self,
        read: HeadsRead | None,
        hashes: dict[int, str],
        last_seq: int,
        chain_intact: bool,
        has_checkpoints: bool,
    ) -> tuple[int, list[Problem], tuple[str, ...]]:
        if read is None or self.heads_file is None:
            return 0, [], ()
        path = self.heads_file.path
        if not read.exists:
            if has_checkpoints:
                return 0, [], (f"no heads file at {path}: the database head cannot be compared with a copy",)
            return 0, [], ()
        warnings: list[str] = []
        problems: list[Problem] = []
        if read.torn_last_line:
            warnings.append(
                f"the last line of {path} is incomplete (a crash while appending); it was skipped"
            )
        elif read.corrupt_lines:
            problems.append(
                Problem(
                    "heads_file_corrupt",
                    1,
                    f"{path} has unreadable lines {read.corrupt_lines[:10]}: the outside copy was altered",
                )
            )
        matched, newest_good = 0, 0
        for head in sorted(read.heads, key=lambda h: h.seq):
            if not self._signature_ok(head.seq, head.entry_hash, head.signed_at, head.key_id, head.signature):
                problems.append(
                    Problem(
                        "file_head_signature_invalid",
                        head.seq,
                        f"the signed head for entry {head.seq} in {path} has an invalid signature",
                    )
                )
                break
            if head.seq > last_seq:
                if chain_intact:
                    newest = max(h.seq for h in read.heads)
                    problems.append(
                        Problem(
                            "database_behind_file",
                            last_seq + 1,
                            f"the database ends at entry {last_seq} but {path} has a signed head at entry "
                            f"{newest}: entries were cut or an older copy of the database was restored",
                        )
                    )
                break
            if hashes.get(head.seq) != head.entry_hash:
                problems.append(
                    Problem(
                        "file_head_mismatch",
                        head.seq,
                        f"entry {head.seq} differs from its signed head in {path}: the chain was rewritten "
                        f"after entry {newest_good}",
                    )
                )
                break
            matched, newest_good = matched + 1, head.seq
        return matched, problems, tuple(warnings)
