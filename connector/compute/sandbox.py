"""A job's model in its own process: no network, bounded memory and time, killed on any breach.

`SandboxedModel` starts `connector.compute.sandbox_child`, hands it the package and its limits,
and then serves as a Predictor (connector.compute.inference): each batch goes over a pipe and
the output comes back as raw float32, checked for shape and size before it is read. A crash, a
timeout or a limit breach ends the process and raises SandboxError with a reason a researcher
can act on; no partial output is ever returned. The worker's own process never loads the model.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO

import torch

from connector.compute.sandbox_wire import (
    WireError,
    read_message,
    read_tensor,
    write_frame,
    write_message,
    write_tensor,
)


class SandboxError(Exception):
    """The model process failed; `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 6 << 30  # address space of the model process (CPU)
    seconds: float = 3600.0  # wall time of the whole run
    start_seconds: float = 120.0  # loading and checking the model
    device: str = "cpu"
    threads: int = 0  # 0: every core
    gpu_memory_fraction: float = 0.9
    max_output_bytes: int = 1 << 30


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()


class _TimedReader:
    """A file-like reader of the child's stdout that gives up at a deadline (the child may hang)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._fd = stream.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self.deadline = _Deadline(0)

    def read(self, size: int) -> bytes:
        chunks = []
        while size:
            left = self.deadline.left()
            if left <= 0 or not self._selector.select(timeout=left):
                raise TimeoutError
            chunk = os.read(self._fd, min(size, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


class SandboxedModel:
    """The model of one package, running in a child process; use as a context manager."""

    def __init__(self, package_bytes: bytes, limits: SandboxLimits | None = None) -> None:
        self._package = package_bytes
        self.limits = limits or SandboxLimits()
        self.device = self.limits.device
        self.network = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _TimedReader | None = None
        self._run_deadline = _Deadline(self.limits.seconds)
        self._stderr: list[bytes] = []

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> SandboxedModel:
        self.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        environment = {
            key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL", "HOME")
        }
        environment["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if self.device == "cpu":
            environment["CUDA_VISIBLE_DEVICES"] = ""
        self._process = subprocess.Popen(  # noqa: S603 (our own interpreter and module, no shell)
            [sys.executable, "-I", "-m", "connector.compute.sandbox_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            start_new_session=True,  # a kill reaches everything the model started
        )
        assert self._process.stdin and self._process.stdout and self._process.stderr
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self._reader = _TimedReader(self._process.stdout)
        threads = self.limits.threads or os.cpu_count() or 1
        try:
            write_message(
                self._process.stdin,
                {
                    "memory_bytes": self.limits.memory_bytes,
                    "cpu_seconds": int(self.limits.seconds * threads) + 60,
                    "device": self.device,
                    "threads": threads,
                    "gpu_memory_fraction": self.limits.gpu_memory_fraction,
                    "max_package_bytes": len(self._package),
                },
            )
            write_frame(self._process.stdin, self._package)
            ready = self._receive(
                min(self.limits.start_seconds, self._run_deadline.left()), "loading the model"
            )
        except BrokenPipeError:
            raise self._failure("model_failed", "the model process ended while starting") from None
        if ready.get("kind") != "ready":
            raise self._failure("model_failed", "the model process did not say it was ready")
        self.network = str(ready.get("network", ""))

    def close(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                assert process.stdin is not None
                write_message(process.stdin, {"kind": "stop"})
                process.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self._kill()
        self._process = None

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def _drain_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            if len(self._stderr) < 50:
                self._stderr.append(line[:500])

    # -- the protocol ----------------------------------------------------------------------------

    def _failure(self, code: str, detail: str) -> SandboxError:
        self._kill()
        process_code = self._process.returncode if self._process is not None else None
        if process_code is not None and process_code < 0:
            name = signal.Signals(-process_code).name
            reason = {
                "SIGKILL": "it was killed (out of memory, or over its limits)",
                "SIGXCPU": "it used up its CPU time",
                "SIGSEGV": "it crashed (segmentation fault)",
            }.get(name, f"it was ended by {name}")
            detail = f"{detail}: {reason}"
        return SandboxError(code, detail)

    def _receive(self, seconds: float, doing: str) -> dict[str, Any]:
        assert self._reader is not None
        self._reader.deadline = _Deadline(max(0.0, seconds))
        try:
            message = read_message(self._reader)  # type: ignore[arg-type]
        except TimeoutError:
            raise self._failure(
                "timeout", f"the model process took longer than {seconds:.0f} s {doing}"
            ) from None
        except WireError:
            raise self._failure("model_failed", f"the model process ended while {doing}") from None
        if message.get("kind") == "error":
            code = str(message.get("code", "model_failed"))
            raise self._failure(code, str(message.get("detail", "the model failed"))[:2000])
        return message

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self._process is None or self._process.stdin is None:
            raise SandboxError("model_failed", "the model process is not running")
        left = self._run_deadline.left()
        if left <= 0:
            raise self._failure(
                "timeout", f"the job ran longer than its limit of {self.limits.seconds:.0f} s"
            )
        try:
            write_tensor(self._process.stdin, batch)
        except (BrokenPipeError, OSError):
            raise self._failure("model_failed", "the model process ended before taking a batch") from None
        header = self._receive(left, "running a batch")
        if header.get("kind") != "tensor":
            raise self._failure("model_failed", "the model process answered out of protocol")
        assert self._reader is not None
        try:
            return read_tensor(self._reader, header, self.limits.max_output_bytes)  # type: ignore[arg-type]
        except TimeoutError:
            raise self._failure("timeout", "the model process stopped in the middle of an answer") from None
        except WireError as exc:
            raise self._failure("model_failed", f"the model's output was refused: {exc}") from None
