"""The model process: `python -m connector.compute.sandbox_child`, started by connector.compute.sandbox.

It reads its limits and the model package from standard input, limits itself (address space and
CPU time on the CPU, a share of GPU memory on CUDA), cuts itself off the network (a network
namespace when the kernel allows it, and in any case Python's sockets refuse), loads the model
weights-only, then answers each batch with the model's output, in the order the batches came (the
worker may send the next batch before it reads an answer). Batches and outputs lie in the shared
memory region the worker hands over (a memfd, see connector.compute.sandbox_wire) or, where there
is none or an output does not fit, travel as frames on the pipes. Any failure is reported as one
error frame and the process exits; it never sees a key, a study UID or a pseudonym, only tensors,
and never writes a file (the shared region is memory the worker created, not a file).
"""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

if TYPE_CHECKING:  # imported in serve(): torch and numpy load after the limits are set
    from connector.compute.sandbox_wire import SharedRegion

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


def _batches(
    stdin: BinaryIO, header: dict[str, Any], region: SharedRegion | None
) -> list[tuple[Any, dict[str, Any]]]:
    """The batches a header announces (read in place from shared memory, or one from the pipe),
    each with where its output should go."""
    import torch

    from connector.compute.sandbox_wire import WireError, read_tensor, tensor_bytes

    if header.get("kind") == "tensor":
        return [(read_tensor(stdin, header), {})]
    if header.get("kind") != "tensors":
        raise WireError(f"unknown message kind {str(header.get('kind'))[:40]!r}")
    if region is None:
        raise WireError("batches in shared memory, but no shared region was handed over")
    size, layouts = header.get("size"), header.get("batches")
    if not isinstance(size, int) or size <= 0:
        raise WireError("the shared region's size is not a positive whole number")
    if not isinstance(layouts, list) or not 1 <= len(layouts) <= 256:
        raise WireError("a message announces from 1 to 256 batches")
    if size != region.size:
        region.map(size)  # the worker grew it (nothing of the old layout is still in use)
    batches = []
    for layout in layouts:
        if not isinstance(layout, dict):
            raise WireError("a batch's layout is not an object")
        shape, _ = tensor_bytes(layout, region.size)
        # In place: the worker does not touch this slot until it has read this batch's answer.
        batches.append((torch.from_numpy(region.array(int(layout.get("input", -1)), shape)), layout))
    return batches


def _answer(stdout: BinaryIO, output: Any, layout: dict[str, Any], region: SharedRegion | None) -> None:
    """Write one batch's answer (flushed by the caller, once per message: one wake-up of the worker)."""
    from connector.compute.sandbox_wire import as_float32, write_message, write_tensor

    array = as_float32(output)
    room = layout.get("output_bytes", 0)
    if region is not None and isinstance(room, int) and array.nbytes <= room:
        shape = region.put(int(layout.get("output", -1)), array)
        write_message(stdout, {"kind": "tensor", "shape": shape, "shared": True}, flush=False)
    else:  # no region, or the output is larger than the room the worker set aside: the pipe
        write_tensor(stdout, output)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    from connector.compute.sandbox_wire import SharedRegion, read_frame, read_message, write_message

    limits = read_message(stdin)
    limit_resources(limits)
    isolation = cut_network()
    package_bytes = read_frame(stdin, int(limits.get("max_package_bytes", 1 << 30)))
    shared_fd = limits.get("shared_fd")
    region = SharedRegion(shared_fd) if isinstance(shared_fd, int) and shared_fd > 2 else None
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
    del package_bytes
    write_message(stdout, {"kind": "ready", "network": isolation, "device": predict.device})
    while True:
        header = read_message(stdin)
        if header.get("kind") == "stop":
            return 0
        batches = _batches(stdin, header, region)
        try:
            # Every batch of the message first, then the answers: the worker wakes once for them.
            outputs = [(predict(batch), layout) for batch, layout in batches]
            del batches  # no view of the region outlives its batch (the worker may remap it)
            for output, layout in outputs:
                _answer(stdout, output, layout, region)
            stdout.flush()
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
