"""Another connector on this machine, in its own process: what the demo runs as the foreign
research team's connector, and what the two-connector tests and `benchmarks/dsp.py` run.

A `LocalConnector` is a data directory, a port on 127.0.0.1 and the settings that make it its own
participant (identifier, organisation, country, trust list). `participant_entry()` builds its
keys once and returns its trust-list entry; `serving()` runs `connector serve` for it and stops it
afterwards. It never binds anything but 127.0.0.1 and never touches another connector's folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalConnector:
    name: str
    data_dir: Path
    port: int
    connector_id: str
    country: str
    organisation: str
    trust_list: Path
    embedded_worker: bool = False
    process_timeout_seconds: float = 60.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsp(self) -> str:
        return self.url + "/dsp"

    def settings_overrides(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "host": "127.0.0.1",
            "port": self.port,
            "public_url": self.url,
            "connector_id": self.connector_id,
            "country": self.country,
            "organisation": self.organisation,
            "trust_list_file": self.trust_list,
            "embedded_worker": self.embedded_worker,
            "dsp_process_timeout_seconds": self.process_timeout_seconds,
        }

    def runtime(self) -> Runtime:
        if not self.trust_list.exists():
            write_trust_list(self.trust_list, [])
        return build_runtime(load_settings(**self.settings_overrides()))

    def participant_entry(self) -> dict[str, Any]:
        """This connector's trust-list entry (its keys are made on first use)."""
        from connector.dataspace.identity import own_participant

        runtime = self.runtime()
        try:
            return own_participant(runtime).to_dict()
        finally:
            runtime.close()

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CONNECTOR_")}
        for key, value in self.settings_overrides().items():
            env[f"CONNECTOR_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        env["CONNECTOR_LOG_LEVEL"] = "WARNING"
        return env

    @contextmanager
    def serving(self, start_seconds: float = 60) -> Iterator[subprocess.Popen[bytes]]:
        """Run `connector serve` for this connector until the block ends; its log goes next to
        its data directory."""
        log_path = self.data_dir.parent / f"{self.name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(  # noqa: S603 (our own interpreter and module, fixed arguments)
                [sys.executable, "-m", "connector", "serve"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + start_seconds
                while True:
                    if process.poll() is not None:
                        raise RuntimeError(f"the {self.name} connector exited at start: see {log_path}")
                    try:
                        if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the {self.name} connector did not start within {start_seconds} s"
                        )
                    time.sleep(0.1)
                yield process
            finally:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def write_trust_list(path: Path, participants: list[dict[str, Any]]) -> None:
    """Write a trust list atomically (a running connector re-reads it when it changes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"participants": participants}, indent=2), encoding="utf-8")
    temporary.replace(path)
