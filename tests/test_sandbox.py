"""The model process: same answers as in-process, no network, and every way it can fail ends it
with a clear reason and no output."""

from __future__ import annotations

import itertools
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
from connector.compute.sandbox_wire import SharedRegion, WireError

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
    # Refused by the model process against the input spec, before the model sees it.
    assert failed.value.code == "input_refused" and "channels" in failed.value.detail.lower()


def test_a_model_over_its_memory_limit_is_stopped(package: bytes) -> None:
    limits = SandboxLimits(threads=1, memory_bytes=3 << 30)
    with SandboxedModel(package, limits) as model, pytest.raises(SandboxError) as failed:
        model(torch.zeros(8192, 1, 64, 64))  # activations far beyond 3 GiB
    assert failed.value.code == "out_of_memory" and "memory" in failed.value.detail


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


def _batches() -> list[torch.Tensor]:
    images, _ = synthetic_examples(40, torch.Generator().manual_seed(7))
    # Uneven sizes: a larger batch in the middle makes the worker lay out its shared memory anew.
    cuts = [0, 4, 8, 12, 28, 32, 36, 39, 40]
    return [images[a:b] for a, b in itertools.pairwise(cuts)]


def test_pipelined_batches_give_the_same_outputs_in_the_same_order_as_one_at_a_time(package: bytes) -> None:
    batches = _batches()
    expected = InProcessPredictor(load_model(read_package(package)), CPU)
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        one_by_one = [model(batch) for batch in batches]
    # Small batches go several to a message (group > 1), or one to a message when each exceeds
    # the group's bytes; the model runs each batch as its own either way.
    for depth, group_bytes in ((2, 2 << 20), (3, 2 << 20), (2, 1)):
        with SandboxedModel(package, SandboxLimits(threads=1), depth=depth, group_bytes=group_bytes) as model:
            pipelined = list(model.map(batches))
            assert model.in_flight == 0
            assert (model.group > 1) is (group_bytes > 1)
            assert model.window == depth * model.group - 1
            # submit/collect by hand: answers come back in submission order.
            for batch in batches[:3]:
                model.submit(batch)
            by_hand = [model.collect() for _ in range(3)]
        assert len(pipelined) == len(batches)
        for got, alone, batch in zip(pipelined, one_by_one, batches, strict=True):
            assert torch.equal(got, alone)
            assert torch.allclose(got, expected(batch), atol=1e-5)
        for got, alone in zip(by_hand, one_by_one[:3], strict=True):
            assert torch.equal(got, alone)


def test_without_shared_memory_batches_go_over_the_pipe_with_the_same_outputs(
    package: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = _batches()
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        shared = list(model.map(batches))
    monkeypatch.setattr(SharedRegion, "create", classmethod(lambda cls: None))
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        assert model._region is None
        piped = list(model.map(batches))
    assert all(torch.equal(a, b) for a, b in zip(shared, piped, strict=True))


def test_a_crash_in_the_middle_of_a_pipeline_fails_every_later_call_and_hands_out_nothing_more(
    package: bytes,
) -> None:
    images, _ = synthetic_examples(12, torch.Generator().manual_seed(5))
    with SandboxedModel(package, SandboxLimits(threads=1), depth=3) as model:
        for start in (0, 4, 8):
            model.submit(images[start : start + 4])
        first = model.collect()
        assert first.shape == (4, 2)
        assert model._process is not None
        os.kill(model._process.pid, signal.SIGKILL)
        model._process.wait()
        with pytest.raises(SandboxError) as crashed:
            model.collect()
        assert crashed.value.code == "model_failed"
        assert model.in_flight == 0
        # Sticky: the answers due are gone, and the sandbox refuses more work with the same reason.
        with pytest.raises(SandboxError) as again:
            model.collect()
        assert again.value is crashed.value
        with pytest.raises(SandboxError):
            model.submit(images[:4])


def test_a_batch_the_model_refuses_in_the_middle_of_a_pipeline_fails_the_run(package: bytes) -> None:
    images, _ = synthetic_examples(8, torch.Generator().manual_seed(6))
    batches = [images[:4], torch.zeros(4, 3, 64, 64), images[4:]]  # three channels: refused
    outputs = []
    with SandboxedModel(package, SandboxLimits(threads=1)) as model, pytest.raises(SandboxError) as failed:
        outputs.extend(model.map(batches))
    assert failed.value.code == "input_refused" and "channels" in failed.value.detail.lower()
    assert len(outputs) <= 1  # only what came before the refused batch, never what came after


def test_a_model_that_failed_before_its_answers_were_read_hands_out_none_and_gives_its_reason(
    package: bytes,
) -> None:
    images, _ = synthetic_examples(4, torch.Generator().manual_seed(9))
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        # Two messages: a good batch (answered), then one the model refuses; the model process has
        # ended before the worker reads anything.
        model.submit(images)
        model._announce()
        model.submit(torch.zeros(4, 3, 64, 64))
        model._announce()
        assert model._process is not None
        model._process.wait(timeout=60)
        with pytest.raises(SandboxError) as failed:
            model.collect()
        assert model.in_flight == 0
    assert failed.value.code == "input_refused" and "channels" in failed.value.detail.lower()


def test_stopping_a_pipeline_early_ends_the_model_process(package: bytes) -> None:
    images, _ = synthetic_examples(16, torch.Generator().manual_seed(8))
    with SandboxedModel(package, SandboxLimits(threads=1)) as model:
        run = model.map(images[start : start + 4] for start in range(0, 16, 4))
        next(run)
        run.close()  # as run_model does when the job is cancelled between batches
        assert model._process is not None and model._process.poll() is not None
        with pytest.raises(SandboxError) as stopped:
            model(images[:4])
    assert stopped.value.code == "cancelled"


def test_the_model_process_cannot_shrink_the_shared_memory_under_the_worker() -> None:
    region = SharedRegion.create()
    if region is None:
        pytest.skip("no memfd on this system: tensors go over the pipe")
    try:
        region.grow(1 << 16)
        region.put(0, torch.arange(6, dtype=torch.float32).reshape(2, 3))
        assert torch.equal(region.take(0, [2, 3]), torch.arange(6, dtype=torch.float32).reshape(2, 3))
        with pytest.raises(PermissionError):
            os.ftruncate(region.fd, 0)  # a shrunk file would make the worker's reads fault
        with pytest.raises(WireError):
            region.array(region.size - 4, [2])  # past the end of the mapping: refused, not read
    finally:
        region.close()
