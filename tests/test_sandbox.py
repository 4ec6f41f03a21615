"""The model process: same answers as in-process, no network, and every way it can fail ends it
with a clear reason and no output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from connector.compute.demo_model import synthetic_examples, train_demo_model
from connector.compute.inference import InProcessPredictor
from connector.compute.networks import load_model
from connector.compute.package import build_package, read_package
from connector.compute.sandbox import SandboxedModel, SandboxError, SandboxLimits

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def package() -> bytes:
    manifest, weights = train_demo_model(seed=1, steps=5)
    return build_package(manifest, weights)


def test_the_sandboxed_model_answers_as_the_model_does_in_process(package: bytes) -> None:
    images, _ = synthetic_examples(6, torch.Generator().manual_seed(4))
    expected = InProcessPredictor(load_model(read_package(package)), CPU)(images)
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        assert model.network in ("namespace", "python")
        first = model(images[:4])
        second = model(images[4:])
    assert torch.allclose(torch.cat([first, second]), expected, atol=1e-5)


def test_a_package_the_checks_refuse_never_runs(package: bytes) -> None:
    manifest = read_package(package).manifest
    # Three labels for a two-class network: the dry run in the model process refuses it.
    output = manifest.output.model_copy(update={"labels": ["a", "b", "c"]})
    wrong = manifest.model_copy(update={"output": output})
    broken = build_package(wrong, read_package(package).weights)
    with pytest.raises(SandboxError) as refused, SandboxedModel(broken, SandboxLimits(threads=1)):
        pass
    assert refused.value.code == "model_refused"


def test_a_batch_the_model_cannot_take_fails_the_run_with_the_models_reason(package: bytes) -> None:
    with SandboxedModel(package, SandboxLimits(threads=1)) as model, pytest.raises(SandboxError) as failed:
        model(torch.zeros(2, 3, 64, 64))  # three channels for a one-channel network
    assert failed.value.code == "model_failed" and "channels" in failed.value.detail.lower()


def test_a_model_over_its_memory_limit_is_stopped(package: bytes) -> None:
    limits = SandboxLimits(threads=1, memory_bytes=3 << 30)
    with SandboxedModel(package, limits) as model, pytest.raises(SandboxError) as failed:
        model(torch.zeros(64, 1, 1024, 1024))  # activations far beyond 3 GiB
    assert failed.value.code in ("out_of_memory", "model_failed")
    assert "memory" in failed.value.detail or "killed" in failed.value.detail


def test_a_model_over_its_time_limit_is_killed(package: bytes) -> None:
    with SandboxedModel(package, SandboxLimits(threads=1, seconds=30)) as model:
        model._run_deadline.at = 0  # the job's time is up before this batch
        with pytest.raises(SandboxError) as failed:
            model(torch.zeros(1, 1, 64, 64))
    assert failed.value.code == "timeout" and "longer than its limit" in failed.value.detail
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        assert model._reader is not None
        # The answer does not come in time: the process is killed, not waited for.
        model._run_deadline.at = model._run_deadline.at - 3600 + 0.05
        with pytest.raises(SandboxError) as slow:
            model(torch.zeros(256, 1, 64, 64))
    assert slow.value.code == "timeout"


def test_a_crash_of_the_model_process_is_reported_and_nothing_is_returned(package: bytes) -> None:
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        assert model._process is not None
        os.kill(model._process.pid, signal.SIGKILL)
        model._process.wait()
        with pytest.raises(SandboxError) as crashed:
            model(torch.zeros(1, 1, 64, 64))
    assert crashed.value.code == "model_failed"


def test_the_model_process_cannot_reach_the_network() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    probe = (
        "import socket, sys\n"
        "from connector.compute.sandbox_child import cut_network\n"
        "print(cut_network())\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "    print('connected')\n"
        "except (PermissionError, OSError) as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    with listener:
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
        )
    isolation, outcome = result.stdout.split("\n")[:2]
    assert isolation in ("namespace", "python")
    assert outcome.startswith("refused")
