"""The audit checkpoint timer inside `connector serve`: every `audit_checkpoint_seconds` it signs the
chain head when it moved, so a quiet connector's last entries are never left unsigned for long.

It only signs the current head (which also copies it to the heads file and the witness); it never
writes an entry, and a failed round (database away) is logged and retried at the next one.
"""

from __future__ import annotations

import logging
import threading

from connector.audit.log import AuditLog

log = logging.getLogger("connector.audit")


class AuditCheckpointer:
    def __init__(self, audit: AuditLog, interval_seconds: float) -> None:
        self.audit = audit
        self.interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int | None:
        """Sign the head if no checkpoint covers it yet; the head's seq, or None for an empty trail."""
        signed = self.audit.checkpoint()
        return signed[0] if signed else None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the database went away for a moment: try again next round
                log.exception("audit checkpoint timer failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="audit-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the timer and sign the head one last time, so a clean shutdown leaves nothing unsigned."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.run_once()
        except Exception:
            log.exception("audit checkpoint at shutdown failed")
