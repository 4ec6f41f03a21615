"""A job's model in its own process: no network, bounded memory and time, killed on any breach.

`SandboxedModel` starts `connector.compute.sandbox_child`, hands it the package and its limits,
and then serves as a Predictor (connector.compute.inference): each batch is copied into a shared
memory region (or, where there is none, sent over a pipe), a small header goes over the pipe, and
the output comes back as raw float32, checked for shape and size and copied out before it is read.
Batches can be pipelined (`submit`/`collect`, `map`): the next batches wait in the model process
while it computes the current ones, answers strictly in order. Small batches are announced in
groups (`group` batches, about `group_bytes` of inputs and outputs, in one message; the model
runs them one by one, each as its own batch, and answers the group at once): every message wakes
both processes, and on a small machine each wake-up takes a core from the model's threads
mid-batch.

It must never return a partial output: a crash, a timeout or a limit breach ends the process and
raises SandboxError with a reason a researcher can act on, and every later call raises it again
(answers already read but not yet collected are dropped). The worker's own process never loads the
model, never unpickles what the model process sends, and never busy-waits on it (it sleeps in
select until the answer comes or the deadline passes).
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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, NoReturn

import torch

from connector.compute.sandbox_wire import (
    PAGE,
    SharedRegion,
    WireError,
    as_float32,
    page_round,
    read_message,
    read_tensor,
    tensor_bytes,
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
    """A file-like reader of the child's stdout that gives up at a deadline (the child may hang).

    Buffered: one select and one read usually bring a whole answer (its length and header), where
    reading each part on its own would cost a system call pair apiece."""

    def __init__(self, stream: BinaryIO) -> None:
        self._fd = stream.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._buffer = bytearray()
        self.deadline = _Deadline(0)

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            left = self.deadline.left()
            if left <= 0 or not self._selector.select(timeout=left):
                raise TimeoutError
            chunk = os.read(self._fd, min(max(size - len(self._buffer), 1 << 16), 1 << 20))
            if not chunk:
                break
            self._buffer += chunk
        data = bytes(memoryview(self._buffer)[:size])
        del self._buffer[:size]
        return data


class SandboxedModel:
    """The model of one package, running in a child process; use as a context manager.

    `model(batch)` runs one batch; `submit(batch)` and `collect()` (or `map(batches)`) keep up to
    `window` batches in flight (`depth` messages of `group` batches), so that the model process
    never waits for the worker between them.
    """

    def __init__(
        self,
        package_bytes: bytes,
        limits: SandboxLimits | None = None,
        depth: int = 2,
        group_bytes: int = 2 << 20,
        max_group: int = 8,
    ) -> None:
        self._package = package_bytes
        self.limits = limits or SandboxLimits()
        self.device = self.limits.device
        self.depth = max(1, depth)
        self.group_bytes = group_bytes
        self.max_group = max(1, max_group)
        self.group = 1  # batches per message, set with the layout from the batches' size
        self.network = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _TimedReader | None = None
        self._run_deadline = _Deadline(self.limits.seconds)
        self._stderr: list[bytes] = []
        self._failed: SandboxError | None = None
        # Shared memory: `depth * group` slots, each an input and an output area of the sizes below.
        self._region: SharedRegion | None = None
        self._input_room = 0
        self._output_room = 0
        self._output_wanted = 0  # learnt from an output too large for the room: used at the next layout
        self._sent = 0
        self._in_flight: deque[int] = deque()  # each submitted batch's slot (-1: over the pipe), oldest first
        self._unsent: list[dict[str, Any]] = []  # the newest of them, in shared memory, not announced yet
        self._answered: deque[torch.Tensor] = deque()  # answers read to make room, not yet collected

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
        self._region = SharedRegion.create()
        self._process = subprocess.Popen(  # noqa: S603 (our own interpreter and module, no shell)
            [sys.executable, "-I", "-m", "connector.compute.sandbox_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment,
            start_new_session=True,  # a kill reaches everything the model started
            pass_fds=(self._region.fd,) if self._region else (),
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
                    **({"shared_fd": self._region.fd} if self._region else {}),
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
        if process is not None and process.poll() is None:
            if self._in_flight:
                # Answers nobody will read (a cancelled or failed run): no point computing them.
                self._kill()
            else:
                try:
                    assert process.stdin is not None
                    write_message(process.stdin, {"kind": "stop"})
                    process.wait(timeout=5)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    self._kill()
        self._process = None
        self._in_flight.clear()
        self._unsent.clear()
        self._answered.clear()
        if self._region is not None:
            self._region.close()
            self._region = None

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
        # Sticky: nothing computed before the failure is handed out after it.
        self._failed = SandboxError(code, detail)
        self._in_flight.clear()
        self._unsent.clear()
        self._answered.clear()
        return self._failed

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

    def _usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._process is None or self._process.stdin is None:
            raise SandboxError("model_failed", "the model process is not running")
        if self._run_deadline.left() <= 0:
            raise self._failure(
                "timeout", f"the job ran longer than its limit of {self.limits.seconds:.0f} s"
            )

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet collected."""
        return len(self._in_flight) + len(self._answered)

    @property
    def window(self) -> int:
        """How many batches a caller should keep in flight before collecting the oldest: all the
        slots but one, so that the next message can be filled while the model runs the last."""
        return max(1, self.depth * self.group - 1)

    def _wait_for_all(self) -> None:
        """Read every answer still due (kept in order for `collect`): the model process is idle after."""
        while self._in_flight:
            self._answered.append(self._answer())

    def _slot_for(self, nbytes: int) -> int:
        """The shared slot this batch goes to, laid out anew (when nothing is in flight) if the batch
        or the outputs seen so far need more room; -1: over the pipe."""
        region = self._region
        if region is None:
            # Over the pipe, one at a time: a large batch written while an answer is due could fill
            # both pipes, each side waiting on the other.
            self._wait_for_all()
            return -1
        if nbytes > self._input_room or self._output_wanted > self._output_room:
            self._wait_for_all()  # the model process must not be using the old layout
            input_room = max(self._input_room, page_round(nbytes))
            output_room = max(self._output_room, self._output_wanted, PAGE)
            group = max(1, min(self.max_group, self.group_bytes // (input_room + output_room)))
            try:
                region.grow(self.depth * group * (input_room + output_room))
            except (OSError, ValueError):  # no memory for it: this batch goes over the pipe
                self._wait_for_all()
                return -1
            self._input_room, self._output_room, self.group = input_room, output_room, group
            self._sent = 0
        slots = self.depth * self.group
        if len(self._in_flight) >= slots:
            self._answered.append(self._answer())  # the oldest batch's slot is free once answered
        return self._sent % slots

    def _announce(self) -> None:
        """Tell the model process of the batches put in shared memory and not announced yet."""
        if not self._unsent:
            return
        assert self._process is not None and self._process.stdin is not None and self._region is not None
        batches, self._unsent = self._unsent, []
        try:
            write_message(
                self._process.stdin, {"kind": "tensors", "size": self._region.size, "batches": batches}
            )
        except (BrokenPipeError, OSError):
            raise self._failure("model_failed", "the model process ended before taking a batch") from None

    def submit(self, batch: torch.Tensor) -> None:
        """Send `batch` to the model process; its output comes from `collect`, in submission order."""
        self._usable()
        assert self._process is not None and self._process.stdin is not None
        array = as_float32(batch)
        slot = self._slot_for(array.nbytes)
        if slot < 0:
            try:
                write_tensor(self._process.stdin, batch)
            except (BrokenPipeError, OSError):
                raise self._failure("model_failed", "the model process ended before taking a batch") from None
        else:
            assert self._region is not None
            offset = slot * (self._input_room + self._output_room)
            shape = self._region.put(offset, array)
            self._unsent.append(
                {
                    "shape": shape,
                    "input": offset,
                    "output": offset + self._input_room,
                    "output_bytes": self._output_room,
                }
            )
        self._sent += 1
        self._in_flight.append(slot)
        if len(self._unsent) >= self.group:
            self._announce()

    def collect(self) -> torch.Tensor:
        """The output of the oldest batch submitted and not yet collected (waiting for it if need be)."""
        if self._failed is not None:
            raise self._failed
        if self._process is not None and self._process.poll() is not None:
            self._last_words()
        if self._answered:
            return self._answered.popleft()
        if not self._in_flight:
            raise RuntimeError("no batch was submitted that is not collected yet")
        return self._answer()

    def _last_words(self) -> NoReturn:
        """The model process ended mid-run: answers it wrote before may still wait in the pipe, and
        none is handed out; its error frame after them, if it left one, gives the reason."""
        while True:
            # Raises with the model's own code and reason at an error frame, or at the pipe's end.
            answer = self._receive(1.0, "running a batch")
            if answer.get("shared") is not True:  # an answer with a frame on the pipe: stop there
                raise self._failure("model_failed", "the model process ended in the middle of the run")

    def _answer(self) -> torch.Tensor:
        if len(self._unsent) == len(self._in_flight):
            self._announce()  # the oldest batch is not announced yet: its group goes as it is
        slot = self._in_flight[0]
        left = self._run_deadline.left()
        if left <= 0:
            raise self._failure(
                "timeout", f"the job ran longer than its limit of {self.limits.seconds:.0f} s"
            )
        header = self._receive(left, "running a batch")
        if header.get("kind") != "tensor":
            raise self._failure("model_failed", "the model process answered out of protocol")
        assert self._reader is not None
        try:
            if header.get("shared") is True:
                if slot < 0 or self._region is None:
                    raise WireError("an answer in shared memory to a batch sent over the pipe")
                shape, _ = tensor_bytes(header, min(self.limits.max_output_bytes, self._output_room))
                offset = slot * (self._input_room + self._output_room) + self._input_room
                output = self._region.take(offset, shape)
            else:
                output = read_tensor(self._reader, header, self.limits.max_output_bytes)  # type: ignore[arg-type]
                # Room for such outputs at the next layout, so they need not come over the pipe again.
                self._output_wanted = max(self._output_wanted, page_round(output.numel() * 4))
        except TimeoutError:
            raise self._failure("timeout", "the model process stopped in the middle of an answer") from None
        except WireError as exc:
            raise self._failure("model_failed", f"the model's output was refused: {exc}") from None
        self._in_flight.popleft()
        return output

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.in_flight:
            raise RuntimeError("batches are in flight: collect them before running one on its own")
        self.submit(batch)
        return self.collect()

    def map(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Each batch's output, in order, with up to `depth * group` batches in flight. Stopping early (the
        run was cancelled) ends the model process: the answers still due are never read."""
        finished = False
        try:
            for batch in batches:
                self.submit(batch)
                while self.in_flight > self.window:
                    yield self.collect()
            while self.in_flight:
                yield self.collect()
            finished = True
        finally:
            if not finished and self._failed is None and self.in_flight:
                self._failure("cancelled", "the run stopped with batches in flight")
