"""The model process sees nothing of the host (issue #14): each layer of its confinement on its
own (files, uid, network, PID, seccomp), the refusal when a layer is missing, models that try to
steal a key or write into the data directory, and nothing the model writes reaching a person."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from connector.compute.demo_model import demo_manifest, synthetic_examples, train_demo_model
from connector.compute.isolation import SANDBOX_UID, bwrap_argv, bwrap_problem, source_folders
from connector.compute.package import build_package
from connector.compute.sandbox import SandboxedModel, SandboxError, SandboxLimits, _TimedReader
from connector.compute.sandbox_wire import write_message

SECRET = b"s3cr3t-master-key-0123456789abcd"  # 32 bytes: one output label per byte
needs_bwrap = pytest.mark.skipif(bwrap_problem("bwrap") is not None, reason="bubblewrap cannot run here")
# The OS layers alone: TorchScript loads without the code scan (which would refuse these models).
UNSCANNED = SandboxLimits(threads=1, skip_code_scan=True)


def torchscript_package(module: nn.Module, labels: int = 2) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    manifest = demo_manifest()
    output = manifest.output.model_copy(update={"labels": [f"l{index}" for index in range(labels)]})
    manifest = manifest.model_copy(
        update={"framework": "torchscript", "network": None, "weights": "model.pt", "output": output}
    )
    return build_package(manifest, buffer.getvalue())


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fake data directory: a 0600 master key with a known secret, and an objects folder."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "objects").mkdir()
    key = tmp_path / "keys" / "master.key"
    key.write_bytes(SECRET)
    key.chmod(0o600)
    (tmp_path / "objects" / "study.bin").write_bytes(b"x" * 32)
    return tmp_path


class KeyThief(nn.Module):
    """Reads a host file with torch.from_file and returns its bytes as the model's output."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stolen = torch.from_file(self.path, shared=False, size=32, dtype=torch.uint8).to(torch.float32)
        return stolen.reshape(1, 32).expand(x.shape[0], 32) + x.sum() * 0


class FileWriter(nn.Module):
    """Maps a host file shared and overwrites it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        target = torch.from_file(self.path, shared=True, size=32, dtype=torch.uint8)
        target.fill_(65)
        return x.sum(dim=[1, 2, 3]).reshape(-1, 1).expand(-1, 2)


class LateThief(nn.Module):
    """Behaves during the dry run (batch of one), then reads a file: the seccomp filter's turn."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            stolen = torch.from_file(self.path, shared=False, size=32, dtype=torch.uint8).to(torch.float32)
            return stolen.reshape(1, 32).expand(x.shape[0], 32)
        return torch.zeros(x.shape[0], 32) + x.sum() * 0


class Blabber(nn.Module):
    """Prints a secret and raises it in its exception text on any batch but the dry run's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            print("SECRET-IN-PRINT-7f3a")
            raise RuntimeError("SECRET-IN-EXCEPTION-7f3a patient 1234 Jane Doe")
        return torch.zeros(x.shape[0], 2) + x.sum() * 0


class Hog(nn.Module):
    """Asks for 16 GiB on any batch but the dry run's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return torch.ones(1 << 32, 1).sum().reshape(1, 1).expand(x.shape[0], 2)
        return torch.zeros(x.shape[0], 2) + x.sum() * 0


class Flood(nn.Module):
    """A right-shaped output for the dry run, then 384 MiB per batch of four."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            return torch.zeros(x.shape[0], 24 << 20)
        return torch.zeros(x.shape[0], 2) + x.sum() * 0


def _images(count: int) -> torch.Tensor:
    return synthetic_examples(count, torch.Generator().manual_seed(3))[0]


# -- models that attack the host ---------------------------------------------------------------


@needs_bwrap
def test_a_model_cannot_read_the_master_key_of_the_data_dir(data_dir: Path) -> None:
    package = torchscript_package(KeyThief(str(data_dir / "keys" / "master.key")), labels=32)
    outputs: list[torch.Tensor] = []
    with pytest.raises(SandboxError) as refused, SandboxedModel(package, UNSCANNED) as model:
        outputs.append(model(_images(2)))
    # The file does not exist in the model's world: the dry run fails and nothing comes back.
    assert refused.value.code == "model_refused"
    assert not outputs
    leaked = bytes(int(v) for v in torch.cat(outputs).flatten().tolist()) if outputs else b""
    assert SECRET not in leaked and SECRET.decode() not in str(refused.value)
    assert "master.key" not in refused.value.detail


@needs_bwrap
def test_a_model_cannot_write_into_the_data_dir(data_dir: Path) -> None:
    target = data_dir / "objects" / "study.bin"
    package = torchscript_package(FileWriter(str(target)))
    # Whether torch fails or maps memory of its own in the sandbox's empty world, the host's file
    # is untouched and nothing new appears beside it.
    with contextlib.suppress(SandboxError), SandboxedModel(package, UNSCANNED) as model:
        model(_images(2))
    assert target.read_bytes() == b"x" * 32
    assert sorted(path.name for path in (data_dir / "objects").iterdir()) == ["study.bin"]


@needs_bwrap
def test_after_loading_the_seccomp_filter_refuses_a_file_the_model_could_see(data_dir: Path) -> None:
    # A file inside the sandbox's own root (the Python standard library): only seccomp stops it.
    visible = os.__file__
    package = torchscript_package(LateThief(visible), labels=32)
    with SandboxedModel(package, UNSCANNED) as model:
        assert model.isolation_layers["seccomp"] is True
        with pytest.raises(SandboxError) as refused:
            model(_images(2))
    assert refused.value.code == "forbidden_syscall"
    assert "forbids" in refused.value.detail


# -- nothing the model writes reaches a person ------------------------------------------------


def test_the_models_exception_text_and_prints_never_leave_it(caplog: pytest.LogCaptureFixture) -> None:
    package = torchscript_package(Blabber())
    caplog.set_level(logging.INFO, logger="connector.compute.sandbox")
    with SandboxedModel(package, UNSCANNED) as model, pytest.raises(SandboxError) as failed:
        model(_images(2))
    error = failed.value
    assert error.code == "model_failed"
    assert error.detail.startswith("the model raised an error on a batch")
    exposed = " ".join([str(error), error.detail, *(record.getMessage() for record in caplog.records)])
    exposed += json.dumps([record.__dict__ for record in caplog.records], default=str)
    assert "SECRET" not in exposed and "Jane Doe" not in exposed


def test_a_model_out_of_memory_is_reported_as_such() -> None:
    package = torchscript_package(Hog())
    limits = SandboxLimits(threads=1, memory_bytes=3 << 30)
    with SandboxedModel(package, limits) as model, pytest.raises(SandboxError) as failed:
        model(_images(2))
    assert failed.value.code == "out_of_memory" and "memory" in failed.value.detail


def test_an_output_of_the_wrong_size_is_refused_in_the_sandbox_and_never_read() -> None:
    package = torchscript_package(Flood())
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        assert model._study_output_bytes == 8  # two labels of float32: all a study may answer
        with pytest.raises(SandboxError) as refused:
            model(_images(4))
    assert refused.value.code == "output_refused"


def _model_process_pid(model: SandboxedModel) -> int:
    """The host pid of the Python process running the model (under bubblewrap, a descendant)."""
    assert model._process is not None
    pending, found = [model._process.pid], []
    while pending:
        pid = pending.pop()
        if b"sandbox_child" in Path(f"/proc/{pid}/cmdline").read_bytes():
            found.append(pid)
        for task in Path(f"/proc/{pid}/task").iterdir():
            pending += [int(child) for child in (task / "children").read_text().split()]
    return found[-1]


def test_a_crash_is_reported_as_a_crash() -> None:
    manifest, weights = train_demo_model(seed=1, steps=2)
    with SandboxedModel(build_package(manifest, weights), SandboxLimits(threads=1)) as model:
        os.kill(_model_process_pid(model), signal.SIGSEGV)
        assert model._process is not None
        model._process.wait(timeout=30)
        with pytest.raises(SandboxError) as crashed:
            model(_images(2))
    assert crashed.value.code == "crashed" and "segmentation fault" in crashed.value.detail


# -- each OS layer on its own: a probe in the exact confinement of the model process -------------

PROBE = r"""
import json, os, socket, sys
results = {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
def attempt(name, action):
    try:
        action()
        results[name] = "done"
    except BaseException as exc:
        results[name] = type(exc).__name__
attempt("read_key", lambda: open(sys.argv[1], "rb").read())
attempt("write_objects", lambda: open(sys.argv[2], "wb").write(b"pwned"))
attempt("read_repo", lambda: open(sys.argv[3], "rb").read())
attempt("connect", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=2))
attempt("signal_worker", lambda: os.kill(int(sys.argv[5]), 0))
attempt("proc_environ", lambda: open("/proc/1/environ", "rb").read())
attempt("passwd", lambda: open("/etc/passwd", "rb").read())
if sys.argv[6] == "seccomp":
    sys.path[:0] = json.loads(sys.argv[7])
    import torch
    torch.ones(2) @ torch.ones(2)  # torch's first-call set-up (cpuinfo) while files still open
    from connector.compute.isolation import install_seccomp
    install_seccomp()
    attempt("open_stdlib", lambda: open(os.__file__, "rb").read())
    attempt("execve", lambda: os.execv("/usr/bin/true", ["true"]))
    attempt("socket", lambda: socket.socket())
    attempt("fork", lambda: os.fork() or os._exit(0))
    results["compute"] = float((torch.ones(64, 64) @ torch.ones(64, 64)).sum())
print(json.dumps(results))
"""


def _probe(data_dir: Path, seccomp: bool) -> dict[str, object]:
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        arguments = [
            str(data_dir / "keys" / "master.key"),
            str(data_dir / "objects" / "planted.bin"),
            str(Path(__file__).resolve().parents[1] / "pyproject.toml"),
            str(listener.getsockname()[1]),
            str(os.getpid()),
            "seccomp" if seccomp else "plain",
            json.dumps(sorted({os.path.dirname(folder) for folder in source_folders()})),
        ]
        argv = bwrap_argv("bwrap", [sys.executable, "-I", "-c", PROBE, *arguments])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_bwrap
def test_the_confinement_hides_the_host_files_the_network_and_the_workers_processes(data_dir: Path) -> None:
    outcome = _probe(data_dir, seccomp=False)
    # Files: neither the key store, nor the data directory, nor the repository exist in there.
    assert outcome["read_key"] == "FileNotFoundError"
    assert outcome["write_objects"] in ("FileNotFoundError", "OSError")  # absent, or a read-only root
    assert outcome["read_repo"] == "FileNotFoundError"
    assert outcome["passwd"] == "FileNotFoundError" and outcome["proc_environ"] == "FileNotFoundError"
    assert not (data_dir / "objects" / "planted.bin").exists()
    # Another uid, not root and not the connector's.
    assert outcome["uid"] == SANDBOX_UID and outcome["gid"] == SANDBOX_UID
    assert outcome["uid"] not in (0, os.getuid())
    # Network: a listening socket on the host's loopback is out of reach.
    assert outcome["connect"] in ("OSError", "ConnectionRefusedError", "PermissionError", "TimeoutError")
    assert outcome["connect"] != "done"
    # PID: the worker is not there to see or signal.
    assert outcome["signal_worker"] in ("ProcessLookupError", "PermissionError")
    assert isinstance(outcome["pid"], int) and outcome["pid"] <= 3


@needs_bwrap
def test_the_seccomp_filter_refuses_opening_executing_and_sockets_but_computing_goes_on(
    data_dir: Path,
) -> None:
    outcome = _probe(data_dir, seccomp=True)
    assert outcome["open_stdlib"] == "PermissionError"
    assert outcome["execve"] == "PermissionError"
    assert outcome["socket"] == "PermissionError"
    assert outcome["fork"] == "PermissionError"
    assert outcome["compute"] == 64.0 * 64 * 64


# -- a missing layer is refused unless accepted ------------------------------------------------


def test_without_bubblewrap_untrusted_models_are_refused_unless_the_settings_accept_it() -> None:
    manifest, weights = train_demo_model(seed=1, steps=2)
    package = build_package(manifest, weights)
    missing = SandboxLimits(threads=1, bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxError) as refused, SandboxedModel(package, missing):
        pass
    assert refused.value.code == "isolation_unavailable"
    for layer in ("user", "mount", "pid", "ipc"):
        assert layer in refused.value.detail
    assert "/nonexistent/bwrap" in refused.value.detail
    accepted = SandboxLimits(
        threads=1, bwrap="/nonexistent/bwrap", accept_weaker_isolation=("user", "mount", "pid", "ipc", "uts")
    )
    with SandboxedModel(package, accepted) as model:
        assert model(_images(2)).shape == (2, 2)
        layers = model.isolation_layers
    assert layers["mount"] is False and layers["user"] is False
    assert layers["seccomp"] is True and layers["rlimits"] is True


@needs_bwrap
def test_every_layer_holds_for_a_real_model() -> None:
    manifest, weights = train_demo_model(seed=1, steps=2)
    with SandboxedModel(build_package(manifest, weights), SandboxLimits(threads=1)) as model:
        assert model(_images(3)).shape == (3, 2)
        assert all(model.isolation_layers.values()), model.isolation_layers
        assert model.network == "namespace"


@pytest.mark.parametrize("shape", [[4, 24 << 20], [3, 2], [4, 2, 1]])
def test_the_worker_refuses_an_answer_of_a_shape_the_manifest_does_not_allow_before_reading_it(
    shape: list[int],
) -> None:
    manifest, weights = train_demo_model(seed=1, steps=2)
    model = SandboxedModel(build_package(manifest, weights), SandboxLimits(threads=1, seconds=20))
    read_end, write_end = os.pipe()
    with open(read_end, "rb", buffering=0) as reader, open(write_end, "wb") as writer:
        # A real pipe, as from a model process that got past its own checks: the header of a batch
        # of four announces `shape`, and the payload never comes. Reading it would wait out the
        # deadline ("timeout"); the worker refuses at the header.
        model._reader = _TimedReader(reader)  # type: ignore[arg-type]
        model._in_flight.append((-1, 4))
        write_message(writer, {"kind": "tensor", "shape": shape})
        with pytest.raises(SandboxError) as refused:
            model._answer()
    assert refused.value.code == "output_refused"
    assert model._study_output_bytes == 8
