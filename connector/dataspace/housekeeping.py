"""Housekeeping of DSP processes inside `connector serve`: a background thread that terminates
negotiations and requested transfers whose peer went silent past `dsp_process_timeout_seconds`.

It only moves processes that are past their deadline to TERMINATED (telling nobody: the peer is
the one that went silent); it never starts, decides or sends anything else.
"""

from __future__ import annotations

import logging
import threading

from connector.dataspace.negotiations import expire_negotiations
from connector.dataspace.transfers import expire_transfers
from connector.runtime import Runtime

log = logging.getLogger("connector.dataspace")


class Housekeeper:
    def __init__(self, runtime: Runtime, interval_seconds: float | None = None) -> None:
        self.runtime = runtime
        timeout = runtime.settings.dsp_process_timeout_seconds
        # A quarter of the timeout: a silent process ends at most 25% later than its deadline.
        self.interval = interval_seconds if interval_seconds is not None else max(1.0, min(60.0, timeout / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        return expire_negotiations(self.runtime) + expire_transfers(self.runtime)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                ended = self.run_once()
                if ended:
                    log.info("terminated silent DSP processes", extra={"processes": len(ended)})
            except Exception:  # the database went away for a moment: try again next round
                log.exception("DSP housekeeping failed")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dsp-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
