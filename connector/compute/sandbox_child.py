"""The model process: `python -m connector.compute.sandbox_child`, started by connector.compute.sandbox.

It reads its limits and the model package from standard input, limits itself (address space and
CPU time on the CPU, a share of GPU memory on CUDA), cuts itself off the network (a network
namespace when the kernel allows it, and in any case Python's sockets refuse), loads the model
weights-only, then answers each batch frame with the model's output frame. Any failure is
reported as one error frame and the process exits; it never sees a key, a study UID or a
pseudonym, only tensors, and never writes a file.
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import sys
import traceback
from typing import Any, BinaryIO, NoReturn

CLONE_NEWNET = 0x40000000


def _no_network(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise PermissionError("the model process has no network access")


def cut_network() -> str:
    """How the network was cut: "namespace" (no interface but a down loopback) or "python"."""
    isolation = "python"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) == 0:
            isolation = "namespace"
    except (OSError, AttributeError):
        pass
    # Always, also inside a namespace: Python code in the process cannot open a socket.
    socket.socket = _no_network  # type: ignore[assignment,misc]
    socket.create_connection = _no_network  # type: ignore[assignment]
    socket.getaddrinfo = _no_network  # type: ignore[assignment]
    return isolation


def limit_resources(limits: dict[str, Any]) -> None:
    memory = limits.get("memory_bytes")
    cpu_seconds = limits.get("cpu_seconds")
    if isinstance(cpu_seconds, int) and cpu_seconds > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    if isinstance(memory, int) and memory > 0 and limits.get("device") == "cpu":
        # CUDA maps a very large address space, so the address-space limit is for the CPU only;
        # on a GPU the share of device memory is capped after the model loads.
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _error(stream: BinaryIO, code: str, detail: str) -> None:
    from connector.compute.sandbox_wire import write_message

    write_message(stream, {"kind": "error", "code": code, "detail": detail[:2000]})


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    from connector.compute.sandbox_wire import (
        read_frame,
        read_message,
        read_tensor,
        write_message,
        write_tensor,
    )

    limits = read_message(stdin)
    limit_resources(limits)
    isolation = cut_network()
    package_bytes = read_frame(stdin, int(limits.get("max_package_bytes", 1 << 30)))
    try:
        import torch

        from connector.compute.inference import InProcessPredictor
        from connector.compute.networks import check_model
        from connector.compute.package import read_package

        torch.set_num_threads(max(1, int(limits.get("threads", 1))))
        model = check_model(read_package(package_bytes))
        device = torch.device(limits.get("device", "cpu"))
        if device.type == "cuda" and isinstance(limits.get("gpu_memory_fraction"), float):
            torch.cuda.set_per_process_memory_fraction(limits["gpu_memory_fraction"], device)
        predict = InProcessPredictor(model, device)
    except MemoryError:
        _error(stdout, "out_of_memory", "the model does not fit in the memory limit")
        return 3
    except Exception as exc:
        _error(stdout, "model_refused", f"{type(exc).__name__}: {exc}")
        return 2
    write_message(stdout, {"kind": "ready", "network": isolation, "device": predict.device})
    while True:
        header = read_message(stdin)
        if header.get("kind") == "stop":
            return 0
        batch = read_tensor(stdin, header)
        try:
            write_tensor(stdout, predict(batch))
        except MemoryError:
            _error(stdout, "out_of_memory", "the model ran out of memory on a batch")
            return 3
        except torch.cuda.OutOfMemoryError:
            _error(stdout, "out_of_memory", "the model ran out of GPU memory on a batch")
            return 3
        except Exception as exc:
            # The model's own failure (shape mismatch, unsupported op): its message, not a trace.
            _error(stdout, "model_failed", f"{type(exc).__name__}: {exc}")
            return 4


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Whatever the model or a library prints must not corrupt the frames on stdout.
    sys.stdout = sys.stderr
    try:
        return serve(stdin, stdout)
    except Exception as exc:  # the wire broke: say so on stderr, the parent reads the exit code
        print(f"model process failed: {exc}", file=sys.stderr)
        traceback.print_exc(limit=3, file=sys.stderr)
        return 5


if __name__ == "__main__":
    os._exit(main())  # no atexit handlers of the model's libraries
