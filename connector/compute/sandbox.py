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

The model process runs confined (connector.compute.isolation: bubblewrap as another uid in its own
namespaces on an empty root, then seccomp); `isolation_layers` says which layers held, and a layer
this machine lacks makes `start` refuse ("isolation_unavailable") unless the limits accept it.

It must never return a partial output: a crash, a timeout or a limit breach ends the process and
raises SandboxError with a reason a researcher can act on, and every later call raises it again
(answers already read but not yet collected are dropped). The worker's own process never loads the
model, never unpickles what the model process sends, and never busy-waits on it (it sleeps in
select until the answer comes or the deadline passes). Nothing the model writes reaches a person as
text: `SandboxError.detail` is always a sentence chosen here for the code, the model's stderr goes
to the operator's log only as a length and a hash, and an output is checked against the shapes the
manifest allows before a byte of it is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, NoReturn, cast

import torch

from connector.compute.isolation import LAYERS, IsolationUnavailable, confinement
from connector.compute.networks import expected_output_shapes
from connector.compute.package import read_package
from connector.compute.sandbox_wire import (
    ERROR_CODES,
    EXCEPTION_NAMES,
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

log = logging.getLogger("connector.compute.sandbox")

# The only texts a failure of the model process shows: chosen here, for its code.
DETAILS = {
    "model_refused": "the model did not load or failed its dry run on a zero input",
    "out_of_memory": "the model ran out of memory (over its memory limit)",
    "input_refused": "a batch does not have the channels and size of the manifest's input spec",
    "model_failed": "the model raised an error on a batch",
    "output_refused": "the model returned an output that is not finite or not of a shape its manifest allows",
    "forbidden_syscall": "the model tried a system call the sandbox forbids (files, processes or network)",
    "protocol": "the model process and the worker disagreed on the protocol",
}
_SIGNALS = {
    "SIGXCPU": ("cpu_time", "the model process used up its CPU time"),
    "SIGSEGV": ("crashed", "the model process crashed (segmentation fault)"),
    "SIGBUS": ("crashed", "the model process crashed (bus error)"),
    "SIGILL": ("crashed", "the model process crashed (illegal instruction)"),
    "SIGFPE": ("crashed", "the model process crashed (arithmetic fault)"),
    "SIGABRT": ("crashed", "the model process aborted"),
    "SIGSYS": ("forbidden_syscall", "the model tried a forbidden system call"),
    "SIGKILL": ("model_failed", "the model process was killed from outside (kernel out-of-memory killer?)"),
}


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
    bwrap: str = "bwrap"  # the bubblewrap executable (a name on PATH or a path)
    accept_weaker_isolation: tuple[str, ...] = ()  # layers of isolation.LAYERS the DPO accepts missing
    skip_code_scan: bool = False  # tests of the OS layers only: TorchScript loads without its code scan


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()


class _TimedReader:
    """A file-like reader of the child's stdout that gives up at a deadline (the child may hang).

    Buffered: one select and one read usually bring a whole answer (its length and header), where
    reading each part on its own would cost a system call pair apiece."""

    def __init__(self, stream: IO[bytes]) -> None:
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
        self.isolation_layers: dict[str, bool] = dict.fromkeys(LAYERS, False)
        manifest = read_package(package_bytes).manifest
        # Per study, as the manifest allows: an answer of any other shape is refused unread.
        self._allowed = [shape[1:] for shape in expected_output_shapes(manifest)]
        self._study_output_bytes = 4 * max(math.prod(shape) for shape in self._allowed)
        self._confined = False
        self._killed_by_us = False
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: _TimedReader | None = None
        self._run_deadline = _Deadline(self.limits.seconds)
        self._stderr_bytes = 0
        self._stderr_hash = hashlib.sha256()
        self._failed: SandboxError | None = None
        # Shared memory: `depth * group` slots, each an input and an output area of the sizes below.
        self._region: SharedRegion | None = None
        self._input_room = 0
        self._output_room = 0
        self._output_wanted = 0  # learnt from an output too large for the room: used at the next layout
        self._sent = 0
        # Each submitted batch's slot (-1: over the pipe) and size, oldest first.
        self._in_flight: deque[tuple[int, int]] = deque()
        self._unsent: list[dict[str, Any]] = []  # the newest of them, in shared memory, not announced yet
        self._answered: deque[torch.Tensor] = deque()  # answers read to make room, not yet collected

    # -- life cycle ----------------------------------------------------------------------------

    def __enter__(self) -> SandboxedModel:
        self.start()
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        try:
            plan = confinement(self.limits.bwrap, self.device, tuple(self.limits.accept_weaker_isolation))
        except IsolationUnavailable as exc:
            self._failed = SandboxError("isolation_unavailable", str(exc))
            raise self._failed from None
        self._confined = plan.layers["mount"]
        environment = {key: value for key, value in os.environ.items() if key in ("PATH", "LANG", "LC_ALL")}
        environment["HOME"] = "/nonexistent"
        environment["USER"] = "model"
        if self.device == "cpu":
            environment["CUDA_VISIBLE_DEVICES"] = ""
        self._region = SharedRegion.create()
        self._process = subprocess.Popen(  # noqa: S603 (bubblewrap and our own interpreter, no shell)
            plan.argv,
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
                    "seccomp": plan.layers["seccomp"],
                    "skip_code_scan": self.limits.skip_code_scan,
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
        self._check_layers(plan.layers, {**(ready.get("layers") or {}), "network": ready.get("network")})
        self.network = "namespace" if self._confined else str(ready.get("network", ""))

    def _check_layers(self, planned: dict[str, bool], seen: object) -> None:
        """The layers that held: planned here and, where it can tell, confirmed by the model process
        itself; a missing one the limits do not accept ends the process."""
        seen = seen if isinstance(seen, dict) else {}  # sent by the model process: only compared
        held = dict(planned)
        uid = seen.get("uid")
        held["user"] = planned["user"] and isinstance(uid, int) and uid not in (0, os.getuid())
        pid = seen.get("pid")
        assert self._process is not None
        held["pid"] = planned["pid"] and isinstance(pid, int) and pid != self._process.pid
        for layer in ("no_new_privs", "seccomp", "rlimits"):
            held[layer] = planned[layer] and seen.get(layer) is True
        if not self._confined:
            held["network"] = seen.get("network") == "namespace"
        self.isolation_layers = held
        missing = sorted(layer for layer, ok in held.items() if not ok)
        refused = [layer for layer in missing if layer not in self.limits.accept_weaker_isolation]
        if refused:
            raise self._failure(
                "isolation_unavailable",
                f"the model process did not get every layer of its isolation: missing {', '.join(refused)}; "
                "untrusted models do not run unless the settings' sandbox_accept_weaker_isolation names them",
            )

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
            self._killed_by_us = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def _drain_stderr(self) -> None:
        """Read the model process's stderr to its end: whatever the model prints is counted and
        hashed for the operator's log, never kept as text (it could carry what the model saw)."""
        assert self._process is not None and self._process.stderr is not None
        stream = cast("io.BufferedReader", self._process.stderr)  # Popen's default buffering
        while chunk := stream.read1(1 << 16):
            self._stderr_bytes += len(chunk)
            self._stderr_hash.update(chunk)
        if self._stderr_bytes:
            log.info(
                "model process wrote to stderr",
                extra={"stderr_bytes": self._stderr_bytes, "stderr_sha256": self._stderr_hash.hexdigest()},
            )

    # -- the protocol ----------------------------------------------------------------------------

    def _failure(self, code: str, detail: str) -> SandboxError:
        process = self._process
        ended = process.poll() if process is not None else None  # before any kill of ours
        killed_by_us = self._killed_by_us
        self._kill()
        if ended is not None and not killed_by_us and code == "model_failed":
            # It ended on its own without an error frame: the signal, if any, names the cause.
            number = -ended if ended < 0 else ended - 128 if self._confined and ended > 128 else 0
            with contextlib.suppress(ValueError):
                if number:
                    name = signal.Signals(number).name
                    code, reason = _SIGNALS.get(name, ("crashed", f"it was ended by {name}"))
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
            message = read_message(self._reader)
        except TimeoutError:
            raise self._failure(
                "timeout", f"the model process took longer than {seconds:.0f} s {doing}"
            ) from None
        except WireError:
            raise self._failure("model_failed", f"the model process ended while {doing}") from None
        if message.get("kind") == "error":
            # A code of the fixed set and a class name of the allow-list; any other word the model
            # process wrote is dropped unread.
            code = message.get("code")
            code = code if isinstance(code, str) and code in ERROR_CODES else "model_failed"
            name = message.get("exception")
            listed = isinstance(name, str) and name in EXCEPTION_NAMES
            detail = DETAILS[code] + (f" ({name})" if listed else "")
            raise self._failure(code, detail)
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

    def _slot_for(self, nbytes: int, studies: int) -> int:
        """The shared slot this batch goes to, laid out anew (when nothing is in flight) if the batch
        or the outputs seen so far need more room; -1: over the pipe."""
        region = self._region
        # The largest answer the manifest allows for this batch gets room before it comes.
        self._output_wanted = max(self._output_wanted, page_round(studies * self._study_output_bytes))
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
        studies = int(array.shape[0]) if array.ndim else 0
        slot = self._slot_for(array.nbytes, studies)
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
        self._in_flight.append((slot, studies))
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
        slot, studies = self._in_flight[0]
        left = self._run_deadline.left()
        if left <= 0:
            raise self._failure(
                "timeout", f"the job ran longer than its limit of {self.limits.seconds:.0f} s"
            )
        header = self._receive(left, "running a batch")
        if header.get("kind") != "tensor":
            raise self._failure("model_failed", "the model process answered out of protocol")
        assert self._reader is not None
        shape = header.get("shape")
        # Checked before a byte is read: the shape the manifest allows for this batch's size, so
        # an output of any other size (a 384 MiB one) is never read.
        if not isinstance(shape, list) or shape[:1] != [studies] or shape[1:] not in self._allowed:
            raise self._failure("output_refused", DETAILS["output_refused"])
        wanted = 4 * studies * math.prod(shape[1:])
        try:
            if header.get("shared") is True:
                if slot < 0 or self._region is None:
                    raise WireError("an answer in shared memory to a batch sent over the pipe")
                shape, _ = tensor_bytes(header, min(self.limits.max_output_bytes, self._output_room, wanted))
                offset = slot * (self._input_room + self._output_room) + self._input_room
                output = self._region.take(offset, shape)
            else:
                output = read_tensor(self._reader, header, min(self.limits.max_output_bytes, wanted))
                # Room for such outputs at the next layout, so they need not come over the pipe again.
                self._output_wanted = max(self._output_wanted, page_round(output.numel() * 4))
        except TimeoutError:
            raise self._failure("timeout", "the model process stopped in the middle of an answer") from None
        except WireError:
            raise self._failure("output_refused", DETAILS["output_refused"]) from None
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
