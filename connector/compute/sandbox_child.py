"""The model process: `python -m connector.compute.sandbox_child` (or `run()`), started by
connector.compute.sandbox, normally inside bubblewrap (connector.compute.isolation).

It reads its limits and the model package from standard input, limits itself (address space and
CPU time on the CPU, a share of GPU memory on CUDA), cuts itself off the network (a network
namespace when the kernel allows it, and in any case Python's sockets refuse), loads the model
weights-only and dry-runs it, then loads the seccomp filter (from then on nothing can be opened or
executed), then answers each batch with the model's output, in the order the batches came (the
worker may send the next batch before it reads an answer). Batches and outputs lie in the shared
memory region the worker hands over (a memfd, see connector.compute.sandbox_wire) or, where there
is none or an output does not fit, travel as frames on the pipes. Any failure is reported as one
error frame and the process exits; it never sees a key, a study UID or a pseudonym, only tensors,
and never writes a file (the shared region is memory the worker created, not a file).

It must never send the model's own text (an exception message, a print) to the worker: an error
frame holds a code of sandbox_wire.ERROR_CODES and at most an allow-listed exception class name,
and an output whose shape the manifest does not allow is refused here, before it is written.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import resource
import socket
import sys
import traceback
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

if TYPE_CHECKING:  # imported in serve(): torch and numpy load after the limits are set
    from connector.compute.sandbox_wire import SharedRegion

CLONE_NEWNET = 0x40000000
PR_GET_SECCOMP = 21
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2
_ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "out of memory", "bad_alloc")


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
    # typeshed types socket.socket as a class, not a name that may be rebound to a function.
    socket.socket = _no_network  # type: ignore[assignment,misc]
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network
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


def _error(stream: BinaryIO, code: str, exc: BaseException | None = None) -> None:
    """One error frame: a code, and the exception's class name only where it is on the list."""
    from connector.compute.sandbox_wire import ERROR_CODES, EXCEPTION_NAMES, write_message

    message: dict[str, Any] = {"kind": "error", "code": code if code in ERROR_CODES else "model_failed"}
    if exc is not None and type(exc).__name__ in EXCEPTION_NAMES:
        message["exception"] = type(exc).__name__
    write_message(stream, message)


def failure_code(exc: BaseException, filtered: bool) -> str:
    """The code of a failure on a batch. The exception's text is read here, inside the sandbox, only
    to tell its cause apart; it never leaves."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, MemoryError) or type(item).__name__ == "OutOfMemoryError":
            return "out_of_memory"
    text = " ".join(str(item).lower()[:4000] for item in chain)
    if any(marker in text for marker in _ALLOCATION_FAILURES):
        return "out_of_memory"
    if filtered and (
        any(isinstance(item, OSError) and item.errno == errno.EPERM for item in chain)
        or "operation not permitted" in text
    ):
        return "forbidden_syscall"
    return "model_failed"


def _prctl(option: int) -> int:
    try:
        return int(ctypes.CDLL(None, use_errno=True).prctl(option, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return -1


def layers_held(limits: dict[str, Any]) -> dict[str, Any]:
    """What this process can see of its own confinement (the worker checks it against its plan)."""
    cpu = resource.getrlimit(resource.RLIMIT_CPU)[0]
    memory = resource.getrlimit(resource.RLIMIT_AS)[0]
    return {
        "uid": os.getuid(),
        "pid": os.getpid(),
        "no_new_privs": _prctl(PR_GET_NO_NEW_PRIVS) == 1,
        "seccomp": _prctl(PR_GET_SECCOMP) == SECCOMP_MODE_FILTER,
        "rlimits": cpu != resource.RLIM_INFINITY
        and (memory != resource.RLIM_INFINITY or limits.get("device") != "cpu"),
    }


def _load(package_bytes: bytes, limits: dict[str, Any]) -> tuple[Any, Any]:
    """The checked model and its manifest. `skip_code_scan` (set only by the tests of the OS
    layers) loads TorchScript without the code scan, to show the sandbox holds on its own."""
    import torch

    from connector.compute.networks import check_model, dry_run
    from connector.compute.package import read_package

    package = read_package(package_bytes)
    if limits.get("skip_code_scan") is True and package.manifest.framework != "monai":
        model = torch.jit.load(io.BytesIO(package.weights), map_location="cpu").eval()
        dry_run(model, package.manifest)
    else:
        model = check_model(package)
    return model, package.manifest


def _check_input(batch: Any, input_shape: list[int]) -> bool:
    return list(batch.shape[1:]) == input_shape and batch.shape[0] >= 1


def _check_output(output: Any, batch_size: int, allowed: list[list[int]]) -> bool:
    """An output the worker may read: one finite float tensor of a shape the manifest allows, its
    first dimension the batch's size."""
    import torch

    if not isinstance(output, torch.Tensor) or not output.is_floating_point():
        return False
    shape = list(output.shape)
    return bool(shape[:1] == [batch_size] and [1, *shape[1:]] in allowed and torch.isfinite(output).all())


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
        from connector.compute.networks import expected_output_shapes

        torch.set_num_threads(max(1, int(limits.get("threads", 1))))
        model, manifest = _load(package_bytes, limits)
        device = torch.device(limits.get("device", "cpu"))
        if device.type == "cuda" and isinstance(limits.get("gpu_memory_fraction"), float):
            torch.cuda.set_per_process_memory_fraction(limits["gpu_memory_fraction"], device)
        predict = InProcessPredictor(model, device)
        input_shape = [manifest.input.channels, *manifest.input.spatial_size]
        allowed = expected_output_shapes(manifest)
        # One batch through the whole path before the filter: every lazy import and first-call
        # set-up of torch and numpy happens now, while files can still be opened.
        _check_output(predict(torch.zeros([1, *input_shape])), 1, allowed)
    except Exception as exc:  # MemoryError included
        out_of_memory = failure_code(exc, False) == "out_of_memory"
        _error(stdout, "out_of_memory" if out_of_memory else "model_refused", exc)
        return 3 if out_of_memory else 2
    del package_bytes, model
    filtered = False
    if limits.get("seccomp") is True:
        from connector.compute.isolation import install_seccomp

        try:
            install_seccomp()
            filtered = True
        except Exception:  # noqa: S110 (the worker sees the missing layer in the ready message)
            pass
    write_message(
        stdout,
        {"kind": "ready", "network": isolation, "device": predict.device, "layers": layers_held(limits)},
    )
    while True:
        header = read_message(stdin)
        if header.get("kind") == "stop":
            return 0
        batches = _batches(stdin, header, region)
        if not all(_check_input(batch, input_shape) for batch, _ in batches):
            _error(stdout, "input_refused")
            return 4
        try:
            # Every batch of the message first, then the answers: the worker wakes once for them.
            outputs = [(predict(batch), layout, batch.shape[0]) for batch, layout in batches]
        except Exception as exc:  # MemoryError included: its code tells it apart
            code = failure_code(exc, filtered)
            _error(stdout, code, exc)
            return 3 if code == "out_of_memory" else 4
        del batches  # no view of the region outlives its batch (the worker may remap it)
        if not all(_check_output(output, size, allowed) for output, _, size in outputs):
            # Refused here: not one number of it is written for the worker to read.
            _error(stdout, "output_refused")
            return 4
        for output, layout, _ in outputs:
            _answer(stdout, output, layout, region)
        stdout.flush()


def main() -> int:
    stdin = sys.stdin.buffer
    # The frames go out on a copy of stdout; fd 1 itself becomes stderr, so that nothing the model
    # or a library prints (Python's print, TorchScript's print to C++'s std::cout) can corrupt or
    # forge a frame. stderr reaches only the operator's log, as a length and a hash.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return serve(stdin, stdout)
    except Exception as exc:  # the wire broke: say so on stderr, the parent reads the exit code
        print(f"model process failed: {type(exc).__name__}", file=sys.stderr)
        traceback.print_exc(limit=3, file=sys.stderr)
        return 5


def run() -> None:
    """The entry point inside the sandbox; no atexit handlers of the model's libraries."""
    os._exit(main())


if __name__ == "__main__":
    run()
