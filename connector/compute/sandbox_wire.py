"""The wire between a job's worker and its model process: length-prefixed frames over pipes, and
a shared memory region for the tensors.

A frame is a 4-byte big-endian length and that many bytes. Control frames are JSON objects;
tensors travel as a JSON header ({"shape": [...]}) followed either by one frame of little-endian
float32 on the pipe, or (header field "shared") by native float32 in a `SharedRegion`: a memfd both
processes map, so a batch is copied once into memory the model process reads in place, instead of
being pushed through a 64 KiB pipe buffer in many wake-ups.

Nothing here unpickles: the model process is not trusted, so what it sends back is parsed as JSON
and raw numbers only, checked for size before it is read, and copied out of shared memory before
anyone looks at it (the model process could still be writing there). The region can only grow:
it is sealed against shrinking, so the model process cannot make the worker's mapping fault.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import struct
from typing import Any, Protocol

import numpy as np
import torch

MAX_CONTROL_BYTES = 1 << 20
MAX_TENSOR_BYTES = 4 << 30
_LENGTH = struct.Struct(">I")
PAGE = mmap.PAGESIZE


# The only reasons the model process may give for failing: a code of this set, and at most the
# class name of the exception from the list below. Nothing the model wrote travels as text.
ERROR_CODES = frozenset(
    {
        "model_refused",  # the package's model did not load or failed its dry run
        "out_of_memory",  # MemoryError, an allocation refused under RLIMIT_AS, CUDA out of memory
        "input_refused",  # a batch that does not have the shape of the manifest's input spec
        "model_failed",  # the model raised on a batch
        "output_refused",  # an output that is not a finite float tensor of an allowed shape
        "forbidden_syscall",  # the model tried a system call the seccomp filter refuses
        "protocol",  # the worker sent something that is not the protocol
    }
)
EXCEPTION_NAMES = frozenset(
    {
        "RuntimeError", "ValueError", "TypeError", "IndexError", "KeyError", "AssertionError",
        "NotImplementedError", "ZeroDivisionError", "MemoryError", "OutOfMemoryError", "PermissionError",
        "OSError", "AttributeError", "PackageError", "JITException",
    }
)  # fmt: skip


class Reader(Protocol):
    """What a frame is read from: a pipe's file object, or the worker's deadline-bound reader."""

    def read(self, size: int, /) -> bytes: ...


class Writer(Protocol):
    """What a frame is written to: a pipe's file object."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class WireError(Exception):
    """The other side sent something that is not a frame of the protocol, or went away."""


def write_frame(stream: Writer, payload: bytes) -> None:
    if len(payload) >= 1 << 32:
        raise WireError("a frame of 4 GiB or more cannot be sent")
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: Reader, max_bytes: int) -> bytes:
    head = stream.read(_LENGTH.size)
    if len(head) != _LENGTH.size:
        raise WireError("the other side closed the connection")
    (length,) = _LENGTH.unpack(head)
    if length > max_bytes:
        raise WireError(f"a frame of {length} bytes exceeds the limit of {max_bytes}")
    payload = stream.read(length)
    if len(payload) != length:
        raise WireError("the other side closed the connection in the middle of a frame")
    return payload


def write_message(stream: Writer, message: dict[str, Any], flush: bool = True) -> None:
    # Length and payload in one buffer and one flush: one write call for the whole frame, so the
    # reader wakes once per message, not once per part (flush=False: the caller flushes several).
    payload = json.dumps(message, allow_nan=False).encode()
    stream.write(_LENGTH.pack(len(payload)) + payload)
    if flush:
        stream.flush()


def read_message(stream: Reader) -> dict[str, Any]:
    try:
        message = json.loads(read_frame(stream, MAX_CONTROL_BYTES))
    except ValueError as exc:
        raise WireError(f"a control frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("a control frame is not a JSON object")
    return message


def as_float32(tensor: torch.Tensor) -> np.ndarray:
    """`tensor` as a contiguous float32 array on the CPU (no copy when it already is one)."""
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()


def tensor_bytes(header: dict[str, Any], max_bytes: int) -> tuple[list[int], int]:
    """The shape a tensor header names and its size in float32 bytes, or WireError."""
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) > 8:
        raise WireError("a tensor header needs a shape of at most 8 whole numbers")
    expected = 4 * int(np.prod(shape, dtype=np.int64))
    if expected > max_bytes:
        raise WireError(f"a tensor of {expected} bytes exceeds the limit of {max_bytes}")
    return shape, expected


def write_tensor(stream: Writer, tensor: torch.Tensor, **fields: Any) -> None:
    array = as_float32(tensor)
    write_message(stream, {"kind": "tensor", "shape": list(array.shape), **fields})
    write_frame(stream, array.astype("<f4", copy=False).tobytes())


def read_tensor(stream: Reader, header: dict[str, Any], max_bytes: int = MAX_TENSOR_BYTES) -> torch.Tensor:
    shape, expected = tensor_bytes(header, max_bytes)
    payload = read_frame(stream, expected)
    if len(payload) != expected:
        raise WireError(f"a tensor of shape {shape} needs {expected} bytes, got {len(payload)}")
    return torch.from_numpy(np.frombuffer(payload, dtype="<f4").reshape(shape).copy())


def page_round(size: int) -> int:
    return -(-size // PAGE) * PAGE


class SharedRegion:
    """Memory both processes map (a memfd): the worker creates and grows it, the model process maps
    what the worker says it holds. Offsets and sizes are checked against the mapping on every use."""

    def __init__(self, fd: int, size: int = 0) -> None:
        self.fd = fd
        self.size = 0
        self._map: mmap.mmap | None = None
        if size:
            self.map(size)

    @classmethod
    def create(cls) -> SharedRegion | None:
        """A new, empty region, or None where the system has no memfd (then tensors use the pipe)."""
        if not hasattr(os, "memfd_create"):
            return None
        try:
            fd = os.memfd_create("connector-sandbox", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            return None
        try:
            # No shrinking (a shrunk file makes reads of the mapping fault: SIGBUS in the worker),
            # and no further seals (the model process could otherwise seal it against growing).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        except OSError:
            os.close(fd)
            return None
        return cls(fd)

    def grow(self, size: int) -> None:
        """At least `size` bytes (the worker's side; never while the other side uses the old layout)."""
        size = page_round(size)
        if size > self.size:
            os.ftruncate(self.fd, size)
            self.map(size)

    def map(self, size: int) -> None:
        """Map `size` bytes of the region (both sides; the model process when told of a new size)."""
        old = self._map
        self._map = mmap.mmap(self.fd, size)
        self.size = size
        if old is not None:
            # A view still held elsewhere keeps the old mapping alive until it goes; never an error.
            with contextlib.suppress(BufferError):
                old.close()

    def array(self, offset: int, shape: list[int] | tuple[int, ...]) -> np.ndarray:
        """A float32 view of the region at `offset` (no copy: valid until the next `map`)."""
        count = int(np.prod(shape, dtype=np.int64))
        if self._map is None or offset < 0 or offset % 4 or offset + 4 * count > self.size:
            raise WireError(f"{4 * count} bytes at {offset} lie outside the shared region of {self.size}")
        return np.frombuffer(self._map, dtype=np.float32, count=count, offset=offset).reshape(shape)

    def put(self, offset: int, tensor: torch.Tensor | np.ndarray) -> list[int]:
        """Copy `tensor` (as float32) into the region at `offset`; its shape."""
        array = as_float32(tensor) if isinstance(tensor, torch.Tensor) else tensor
        # numpy's copy: one thread, a memcpy (torch's copy_ could wake its thread pool here).
        np.copyto(self.array(offset, array.shape), array, casting="same_kind")
        return list(array.shape)

    def take(self, offset: int, shape: list[int]) -> torch.Tensor:
        """A copy of the float32 tensor of `shape` at `offset`: the caller's own, whatever the other
        side writes there afterwards."""
        return torch.from_numpy(self.array(offset, shape).copy())

    def close(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)
