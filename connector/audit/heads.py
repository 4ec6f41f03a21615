"""Copies of the signed chain head kept outside the database: an append-only file and a remote witness.

A DBA who can rewrite every row can also rewrite the chain and drop checkpoints; he cannot rewrite
this file in the data directory (another system, 0600) nor a witness on another host, so `verify`
compares the database against them. This module only appends and reads signed heads: it never
signs, never rewrites or truncates the file, and a slow or failing witness never blocks a record.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("connector.audit")


@dataclass(frozen=True)
class SignedHead:
    """One signed checkpoint: the connector vouches that entry `seq` had hash `entry_hash`."""

    seq: int
    entry_hash: str
    signed_at: str
    key_id: str
    signature: str

    def as_json(self, connector_id: str) -> dict[str, Any]:
        return {"connector_id": connector_id, **asdict(self)}

    @classmethod
    def from_json(cls, value: Any) -> SignedHead:
        """Parse one stored or received head; ValueError names what is wrong."""
        if not isinstance(value, dict):
            raise ValueError("a signed head must be a JSON object")
        try:
            head = cls(
                seq=value["seq"],
                entry_hash=value["entry_hash"],
                signed_at=value["signed_at"],
                key_id=value["key_id"],
                signature=value["signature"],
            )
        except KeyError as exc:
            raise ValueError(f"a signed head lacks {exc.args[0]!r}") from None
        if not isinstance(head.seq, int) or isinstance(head.seq, bool) or head.seq < 1:
            raise ValueError("a signed head's seq must be a positive integer")
        if not all(
            isinstance(v, str) for v in (head.entry_hash, head.signed_at, head.key_id, head.signature)
        ):
            raise ValueError("a signed head's entry_hash, signed_at, key_id and signature must be strings")
        return head


@dataclass(frozen=True)
class HeadsRead:
    """What the heads file holds: the readable heads and the lines that were not."""

    heads: list[SignedHead] = field(default_factory=list)
    exists: bool = False
    corrupt_lines: list[int] = field(default_factory=list)  # 1-based
    line_count: int = 0

    @property
    def torn_last_line(self) -> bool:
        """Only the last line is unreadable: a crash mid-append, tolerated (and reported as a warning)."""
        return self.corrupt_lines == [self.line_count] and self.line_count > 0


class HeadsFile:
    """`<data_dir>/audit/heads.jsonl`: one signed head per line, appended with O_APPEND and fsync."""

    def __init__(self, path: Path, connector_id: str) -> None:
        self.path = path
        self._connector_id = connector_id

    def append(self, head: SignedHead) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = (json.dumps(head.as_json(self._connector_id), sort_keys=True) + "\n").encode()
        # One write() of a short line under O_APPEND: concurrent workers never interleave inside a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> HeadsRead:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return HeadsRead()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        heads: list[SignedHead] = []
        corrupt: list[int] = []
        for number, line in enumerate(lines, start=1):
            try:
                heads.append(SignedHead.from_json(json.loads(line)))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
                corrupt.append(number)
        return HeadsRead(heads, True, corrupt, len(lines))


class Witness:
    """Pushes signed heads to `audit_witness_url` from a background thread.

    Only the newest head matters (it vouches for the whole chain before it), so a failed push is not
    queued: the next checkpoint pushes its own, newer head. `record` only enqueues.
    """

    def __init__(self, url: str, connector_id: str, timeout_seconds: float = 5.0) -> None:
        self.url = url
        self._connector_id = connector_id
        self._timeout = timeout_seconds
        self._queue: queue.Queue[SignedHead | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.pending: SignedHead | None = None  # the newest head the witness has not confirmed
        self.delivered: SignedHead | None = None

    def submit(self, head: SignedHead) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="audit-witness", daemon=True)
                self._thread.start()
        self._queue.put(head)

    def _loop(self) -> None:
        while (head := self._queue.get()) is not None:
            try:
                newest = head if self.pending is None or head.seq >= self.pending.seq else self.pending
                self.pending = newest
                self._push(newest)
            finally:
                self._queue.task_done()

    def _push(self, head: SignedHead) -> None:
        try:
            response = httpx.post(self.url, json=head.as_json(self._connector_id), timeout=self._timeout)
            response.raise_for_status()
        except Exception as exc:  # any failure (refused, 5xx, bad TLS): the thread lives on, the head waits
            log.warning(
                "audit witness push failed; retrying at the next checkpoint",
                extra={"witness": self.url, "seq": head.seq, "error": str(exc)},
            )
            return
        self.delivered, self.pending = head, None

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submitted head was tried (tests, and a CLI command before it exits)."""
        if self._thread is None:
            return
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        if self._thread is not None:
            self._queue.put(None)
