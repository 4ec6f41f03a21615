"""The wire between a job's worker and its model process: length-prefixed frames over pipes.

A frame is a 4-byte big-endian length and that many bytes. Control frames are JSON objects;
tensors travel as a JSON header ({"shape": [...]}) followed by one frame of little-endian float32.
Nothing here unpickles: the model process is not trusted, so what it sends back is parsed as JSON
and raw numbers only, and checked for size before it is read.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np
import torch

MAX_CONTROL_BYTES = 1 << 20
MAX_TENSOR_BYTES = 4 << 30
_LENGTH = struct.Struct(">I")


class WireError(Exception):
    """The other side sent something that is not a frame of the protocol, or went away."""


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    if len(payload) >= 1 << 32:
        raise WireError("a frame of 4 GiB or more cannot be sent")
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_frame(stream: BinaryIO, max_bytes: int) -> bytes:
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


def write_message(stream: BinaryIO, message: dict[str, Any]) -> None:
    write_frame(stream, json.dumps(message, allow_nan=False).encode())


def read_message(stream: BinaryIO) -> dict[str, Any]:
    try:
        message = json.loads(read_frame(stream, MAX_CONTROL_BYTES))
    except ValueError as exc:
        raise WireError(f"a control frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("a control frame is not a JSON object")
    return message


def write_tensor(stream: BinaryIO, tensor: torch.Tensor, **fields: Any) -> None:
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    write_message(stream, {"kind": "tensor", "shape": list(array.shape), **fields})
    write_frame(stream, array.astype("<f4", copy=False).tobytes())


def read_tensor(stream: BinaryIO, header: dict[str, Any], max_bytes: int = MAX_TENSOR_BYTES) -> torch.Tensor:
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) > 8:
        raise WireError("a tensor header needs a shape of at most 8 whole numbers")
    expected = 4 * int(np.prod(shape, dtype=np.int64))
    if expected > max_bytes:
        raise WireError(f"a tensor of {expected} bytes exceeds the limit of {max_bytes}")
    payload = read_frame(stream, expected)
    if len(payload) != expected:
        raise WireError(f"a tensor of shape {shape} needs {expected} bytes, got {len(payload)}")
    return torch.from_numpy(np.frombuffer(payload, dtype="<f4").reshape(shape).copy())
