"""The inference core: batched, overlapped, and strict about what a model returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from monai.networks.nets import DenseNet121

from connector.compute.cohort_data import StudyInput
from connector.compute.inference import InProcessPredictor, ModelOutputError, choose_device, run_model
from connector.compute.manifest import Manifest

CPU = torch.device("cpu")


def manifest(
    kind: str = "classification", labels: list[str] | None = None, **input_changes: object
) -> Manifest:
    spec: dict[str, object] = {"modalities": ["CT"], "dimensions": 2, "spatial_size": [32, 32]}
    spec.update(input_changes)
    return Manifest.model_validate(
        {
            "name": "test-model",
            "version": "1",
            "framework": "monai",
            "network": {"name": "DenseNet121", "parameters": {}},
            "weights": "model.safetensors",
            "input": spec,
            "output": {"kind": kind, "labels": labels or ["no-nodule", "nodule"]},
        }
    )


def inputs(count: int, shape: tuple[int, ...] = (1, 32, 32), skip_every: int = 0) -> list[StudyInput]:
    generator = torch.Generator().manual_seed(3)
    items = []
    for index in range(count):
        if skip_every and index % skip_every == 0:
            items.append(StudyInput(f"2.25.{index}", None, "no instance with pixels of modality CT"))
        else:
            items.append(StudyInput(f"2.25.{index}", torch.rand(shape, generator=generator)))
    return items


def small_densenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=8)


def test_batched_outputs_equal_a_bare_loop_and_skips_are_reported() -> None:
    model = small_densenet().eval()
    items = inputs(11, skip_every=5)
    outputs, stats = run_model(InProcessPredictor(model, CPU), manifest(), items, batch_size=4)
    assert stats.studies == 8 and set(stats.skipped) == {"2.25.0", "2.25.5", "2.25.10"} and stats.batches == 2
    with torch.inference_mode():
        bare = torch.softmax(model(torch.stack([i.tensor for i in items if i.tensor is not None])), dim=1)
    assert [o.study_uid for o in outputs] == [i.study_uid for i in items if i.tensor is not None]
    for output, row in zip(outputs, bare, strict=True):
        assert output.values["nodule"] == pytest.approx(float(row[1]), abs=1e-5)
        assert sum(output.values.values()) == pytest.approx(1.0, abs=1e-5)


class Constant(torch.nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], *self.value.shape[1:]).clone()


def test_segmentation_statistics_are_label_volumes_in_millilitres() -> None:
    logits = torch.zeros(1, 2, 8, 8, 4)
    logits[:, 1, :4] = 1.0  # label "nodule" wins in half the voxels: 128 voxels
    spec = manifest("segmentation-statistics", ["background", "nodule"], dimensions=3, spatial_size=[8, 8, 4])
    spec = Manifest.model_validate(
        {**spec.model_dump(), "input": {**spec.input.model_dump(), "spacing_mm": [1.0, 1.0, 2.0]}}
    )
    outputs, _ = run_model(InProcessPredictor(Constant(logits), CPU), spec, inputs(2, (1, 8, 8, 4)))
    assert outputs[0].values == {"background": pytest.approx(0.256), "nodule": pytest.approx(0.256)}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (torch.full((1, 2), float("nan")), "not finite"),
        (torch.zeros(1, 3), "3 classes; the manifest names 2"),
        (torch.zeros(1, 2, 5, 5), "shape (2, 5, 5)"),
    ],
)
def test_outputs_that_break_the_manifest_stop_the_run(value: torch.Tensor, message: str) -> None:
    with pytest.raises(ModelOutputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_model(InProcessPredictor(Constant(value), CPU), manifest(), inputs(3))


def test_a_failure_while_reading_data_stops_the_run_and_returns_nothing() -> None:
    def broken() -> Iterator[StudyInput]:
        yield from inputs(2)
        raise OSError("object store unreachable")

    with pytest.raises(OSError, match="object store unreachable"):
        run_model(InProcessPredictor(small_densenet(), CPU), manifest(), broken(), batch_size=1)


def test_a_cancelled_run_stops_between_batches() -> None:
    seen: list[int] = []
    with pytest.raises(InterruptedError):
        run_model(
            InProcessPredictor(small_densenet(), CPU),
            manifest(),
            inputs(20),
            batch_size=2,
            on_batch=seen.append,
            should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [2, 2]


def test_the_device_is_cuda_only_when_present() -> None:
    assert choose_device("cpu").type == "cpu"
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


class RecordingPipeline:
    """A pipelined predictor (like the sandbox): records how many batches it held at once."""

    device = "cpu"
    window = 2

    def __init__(self, model: torch.nn.Module) -> None:
        self.inner = InProcessPredictor(model, CPU)
        self.queue: list[torch.Tensor] = []
        self.most_in_flight = 0
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(batch)

    def submit(self, batch: torch.Tensor) -> None:
        self.queue.append(self.inner(batch))
        self.most_in_flight = max(self.most_in_flight, len(self.queue))

    def collect(self) -> torch.Tensor:
        return self.queue.pop(0)


def test_a_pipelined_predictor_gets_the_next_batch_before_the_last_is_read_and_outputs_are_unchanged() -> (
    None
):
    model = small_densenet()
    items = inputs(11, skip_every=4)
    expected, expected_stats = run_model(InProcessPredictor(model, CPU), manifest(), items, batch_size=3)
    pipeline = RecordingPipeline(model)
    outputs, stats = run_model(pipeline, manifest(), items, batch_size=3)
    # `window` in flight, and one more for a moment: the newest is submitted before the oldest is read.
    assert pipeline.most_in_flight == pipeline.window + 1 and pipeline.calls == 0 and not pipeline.queue
    assert [o.study_uid for o in outputs] == [o.study_uid for o in expected]
    assert [o.values for o in outputs] == [o.values for o in expected]
    assert (stats.batches, stats.skipped) == (expected_stats.batches, expected_stats.skipped)
