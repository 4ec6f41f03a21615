"""Benchmark: a compute-to-data job's inference against a bare torch/MONAI loop of the same model.

Everything runs in this one process (and the job's sandbox process) on this machine, on a
synthetic cohort (``--patients``) really ingested into an encrypted dataset (SQLite and the local
object store in a temporary folder). It measures:

* the data path, per input spec, over the cohort's matching studies: ``decrypted_instances`` alone
  (studies/s and MB/s of decrypted DICOM, split into index + key unwrap, object reads, AES-GCM +
  SHA-256 and DICOM parsing), ``study_tensor`` alone (pixel decoding and the MONAI transforms, on
  instances already decrypted) and both through ``cohort_inputs``. Specs: 2D (CR/DX/CT, middle
  image, 64x64: the demo model's input; and 128x128) and 3D (CT volume resampled to 4 mm,
  64x64x16).
* the models, on the same already-prepared tensors (the cohort's tensors, cycled to enough images
  for about ``--seconds`` a timing) with the same batch size (``--batch-size``, the job's default 8):

  - the bare loop (the peer): ``model(batch)`` under ``torch.inference_mode()`` on batches stacked
    beforehand (on CUDA: pinned batches copied to the device and the output copied back, in fp32
    and under autocast, the precision the job uses; the faster of the two is the reference);
  - the job in-process: ``run_model`` with ``InProcessPredictor`` (prefetch thread, stacking,
    per-study outputs);
  - the job as it runs (the goal's subject): ``run_model`` with ``SandboxedModel`` (the model in its
    own process, batches and outputs over a pipe); again with the two hooks ``connector.jobs.runner``
    gives it (emulated on this database: a cancellation read at most once a second, a progress
    write at most twice a second); and, as a diagnostic, with this (the worker's) process held to one torch
    thread (as `connector.jobs.runner.Worker` holds it);
  - diagnostics of the sandbox alone, on the bare loop's batches (no run_model around it): one batch
    at a time (``SandboxedModel(batch)``: the wire's round trip per batch), and pipelined
    (``SandboxedModel.map``: its window of batches in flight, small batches announced in groups),
    as run_model sends them;
  - end to end: ``run_model`` with ``SandboxedModel`` over ``cohort_inputs`` (decryption and
    transforms on the prefetch thread, meant to overlap with the model), the studies cycled.

  Models: the demo model (a small 2D MONAI ResNet from ``train_demo_model`` with a few steps: weights
  do not matter for speed), DenseNet121 2D at 128x128 and SegResNet 3D on the 3D spec, both with
  random weights in a package built by ``build_package``. The sandbox's start (loading, checking
  and dry-running the model) is shown apart: a job pays it once.

Each model timing runs ``--rounds`` times, the methods interleaved within a round and each round
starting with another one (so that load from other processes hits each alike); the best round is
kept and the median shown beside it (the data path keeps the best of at most 3 rounds). CPU time
per image (worker and model processes together, all rounds) is shown too: it says where cores go
when wall time is swung by other work on the machine.

Goal (issue "Compute-to-data", performance): the job's images/s at least 90% of the bare loop's
(overhead under 10%), on the CPU and on a GPU when there is one (``--device auto`` takes CUDA when
torch sees it, and then measures the CPU as well unless ``--no-cpu``). It prints tables, ratios,
where the time goes and one verdict line per model and device; it never asserts and exits 0 once
it has measured.

    python benchmarks/inference.py              # 20 patients, 5 rounds of about 1 s a timing
    python benchmarks/inference.py --quick      # 8 patients, 3 rounds of about 0.2 s
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

# Run as a script from anywhere: the project's packages first, and not this folder (whose deid.py
# would shadow the deid library).
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() not in (ROOT, Path(__file__).resolve().parent)
]

import pydicom  # noqa: E402
import safetensors.torch  # noqa: E402
import torch  # noqa: E402
from sqlalchemy import func, select, update  # noqa: E402

from connector.compute.cohort_data import (  # noqa: E402
    CohortFilter,
    CohortStudy,
    StudyInput,
    StudySkipped,
    cohort_inputs,
    decrypted_instances,
    select_studies,
    study_tensor,
)
from connector.compute.demo_model import train_demo_model  # noqa: E402
from connector.compute.inference import InProcessPredictor, Predictor, choose_device, run_model  # noqa: E402
from connector.compute.manifest import (  # noqa: E402
    InputSpec,
    Manifest,
    NetworkSpec,
    Normalisation,
    OutputSpec,
)
from connector.compute.networks import build_network, load_model  # noqa: E402
from connector.compute.package import build_package, read_package  # noqa: E402
from connector.compute.sandbox import SandboxedModel, SandboxLimits  # noqa: E402
from connector.datasets.ingest import ingest  # noqa: E402
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord  # noqa: E402
from connector.datasets.vault import DatasetVault  # noqa: E402
from connector.deid.options import DEFAULT_OPTIONS  # noqa: E402
from connector.runtime import Runtime, build_runtime  # noqa: E402
from connector.settings import load_settings  # noqa: E402
from connector.synth import generate_cohort  # noqa: E402

GOAL_RATIO = 0.90  # the job's images/s at least 90% of the bare loop's
DATASET = "bench-inference"
MAX_IMAGES = 50_000  # cap on the images of one timing (fast models on a GPU)
SPEC_2D = InputSpec(
    modalities=["CR", "DX", "CT"],
    dimensions=2,
    spatial_size=[64, 64],
    channels=1,
    normalisation=Normalisation(kind="minmax"),
)
SPEC_2D_LARGE = SPEC_2D.model_copy(update={"spatial_size": [128, 128]})
SPEC_3D = InputSpec(
    modalities=["CT"],
    dimensions=3,
    spatial_size=[64, 64, 16],
    spacing_mm=[4.0, 4.0, 4.0],
    channels=1,
    normalisation=Normalisation(kind="window", window_center=40.0, window_width=400.0),
)
SPECS: dict[str, tuple[InputSpec, tuple[str, ...]]] = {
    "2D 64x64 (CR/DX/CT)": (SPEC_2D, ("CR", "DX", "CT")),
    "2D 128x128 (CR/DX/CT)": (SPEC_2D_LARGE, ("CR", "DX", "CT")),
    "3D 64x64x16 @4 mm (CT)": (SPEC_3D, ("CT",)),
}
T = TypeVar("T")
DECRYPT_STEPS = ("index + key unwrap", "object reads", "AES-GCM + SHA-256", "DICOM parse")


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Timing:
    method: str
    images: int
    seconds: float
    median_rate: float = 0.0
    cpu_per_image: float = float("nan")  # seconds, all rounds (worker process and model process)
    others: float = 0.0  # median share of the cores other processes took during the rounds

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Best:
    """Rounds of one timing: the best (shortest) is kept, with what it counted; the median is shown."""

    seconds: float = float("inf")
    count: int = 0
    samples: list[float] = field(default_factory=list)  # count / seconds of each round
    cpu_seconds: float = 0.0  # all rounds together
    counted: int = 0  # all rounds together
    others: list[float] = field(default_factory=list)  # share of the cores other work took, each round

    def keep(self, seconds: float, count: int, cpu_seconds: float = 0.0, others: float = 0.0) -> None:
        self.samples.append(count / seconds if seconds > 0 else float("inf"))
        self.cpu_seconds += cpu_seconds
        self.counted += count
        self.others.append(others)
        if seconds < self.seconds:
            self.seconds, self.count = seconds, count

    @property
    def cpu_per_item(self) -> float:
        return self.cpu_seconds / self.counted if self.counted else float("nan")

    @property
    def median_rate(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


def clock(function: Callable[[], int]) -> tuple[float, int]:
    """Seconds `function` took, and the count it returned."""
    started = time.perf_counter()
    count = function()
    return time.perf_counter() - started, count


_TICKS = os.sysconf("SC_CLK_TCK")


def sandbox_pids() -> list[int]:
    """The model processes this process started (connector.compute.sandbox_child), from /proc."""
    pids = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):
                if b"connector.compute.sandbox_child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
    return pids


def cpu_now(pids: list[int]) -> float:
    """CPU seconds (user + system) of this process (all its threads) and of the processes `pids`."""
    total = time.process_time()
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    return total


def machine_busy() -> float:
    """CPU seconds every process of the machine has used since it started (from /proc/stat)."""
    with contextlib.suppress(OSError, ValueError):
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields)
        return (user + nice + system + irq + softirq + steal) / _TICKS
    return 0.0


def clock_cpu(function: Callable[[], int], pids: list[int]) -> tuple[float, int, float, float]:
    """Seconds `function` took, the count it returned, the CPU seconds it used (with `pids`) and the
    share of the machine's cores that other processes took meanwhile."""
    cpu, busy = cpu_now(pids), machine_busy()
    started = time.perf_counter()
    count = function()
    seconds = time.perf_counter() - started
    used = cpu_now(pids) - cpu
    others = max(0.0, machine_busy() - busy - used) / (seconds * (os.cpu_count() or 1))
    return seconds, count, used, min(1.0, others)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the cohort --------------------------------------------------------------------------------


def build_cohort(root: Path, patients: int, seed: int) -> tuple[Runtime, set[str], str]:
    """A runtime whose encrypted dataset holds the synthetic cohort; its patients; a summary line."""
    started = time.perf_counter()
    summary = generate_cohort(root / "incoming", patients, seed=seed)
    generated = time.perf_counter() - started
    runtime = build_runtime(load_settings(data_dir=root / "data"))
    started = time.perf_counter()
    ingest(runtime, root / "incoming", DATASET, DEFAULT_OPTIONS)
    ingested = time.perf_counter() - started
    with runtime.sessions() as session:
        everyone = set(
            session.execute(
                select(StudyRecord.patient_pseudonym).where(StudyRecord.dataset == DATASET)
            ).scalars()
        )
    line = (
        f"{summary.patients} patients, {summary.studies} studies, {summary.files} files "
        f"({summary.bytes / 1e6:.1f} MB): generated in {generated:.1f} s, ingested in {ingested:.1f} s"
    )
    return runtime, everyone, line


def plain_bytes(runtime: Runtime, studies: list[CohortStudy]) -> tuple[int, int]:
    """Instances and decrypted bytes of `studies`."""
    uids = [study.study_uid for study in studies]
    with runtime.sessions() as session:
        count, size = session.execute(
            select(func.count(ObjectRecord.id), func.coalesce(func.sum(ObjectRecord.plain_size), 0)).where(
                ObjectRecord.dataset == DATASET, ObjectRecord.study_uid.in_(uids)
            )
        ).one()
    return int(count), int(size)


def decrypt_steps(runtime: Runtime, studies: list[CohortStudy]) -> dict[str, float]:
    """The steps of `decrypted_instances`, each timed on its own (the same calls, in the same order)."""
    spent = dict.fromkeys(DECRYPT_STEPS, 0.0)
    vault = DatasetVault(DATASET, runtime.keys, runtime.sessions)
    for study in studies:
        marks = [time.perf_counter()]
        data_key = vault.study_key(study.study_uid)
        with runtime.sessions() as session:
            objects = list(
                session.execute(
                    select(ObjectRecord.object_key, ObjectRecord.plain_sha256).where(
                        ObjectRecord.dataset == DATASET, ObjectRecord.study_uid == study.study_uid
                    )
                ).all()
            )
        marks.append(time.perf_counter())
        blobs = [runtime.objects.get(key) for key, _ in objects]
        marks.append(time.perf_counter())
        plain = [
            vault.decrypt(blob, data_key, study.study_uid, key, digest)
            for blob, (key, digest) in zip(blobs, objects, strict=True)
        ]
        marks.append(time.perf_counter())
        for data in plain:
            pydicom.dcmread(io.BytesIO(data))
        marks.append(time.perf_counter())
        for step, (start, end) in zip(DECRYPT_STEPS, itertools.pairwise(marks), strict=True):
            spent[step] += end - start
    return spent


@dataclass
class Prepared:
    """One input spec over its cohort: the timings of the data path and the tensors it made."""

    name: str
    spec: InputSpec
    studies: list[CohortStudy]
    instances: int
    plain_bytes: int
    decrypt: Best
    steps: dict[str, float]
    transform: Best
    both: Best
    inputs: list[StudyInput]  # the tensors (skipped studies left out)
    skipped: int

    @property
    def decrypt_per_study(self) -> float:
        return self.decrypt.seconds / len(self.studies)

    @property
    def transform_per_study(self) -> float:
        return self.transform.seconds / len(self.studies)


def prepare(runtime: Runtime, everyone: set[str], name: str, rounds: int) -> Prepared:
    spec, modalities = SPECS[name]
    studies = select_studies(runtime, DATASET, CohortFilter(modality=modalities), everyone)
    instances, size = plain_bytes(runtime, studies)
    decrypt, transform, both = Best(), Best(), Best()
    steps: dict[str, float] = {}
    decrypted: list[list[pydicom.Dataset]] = []
    inputs: list[StudyInput] = []
    for _ in range(rounds):

        def decrypt_all() -> int:
            decrypted[:] = [decrypted_instances(runtime, DATASET, study) for study in studies]
            return len(decrypted)

        def transform_all() -> int:
            inputs.clear()
            for study, found in zip(studies, decrypted, strict=True):
                with contextlib.suppress(StudySkipped):
                    inputs.append(StudyInput(study.study_uid, study_tensor(found, spec)))
            return len(inputs)

        def both_ways() -> int:
            return sum(item.tensor is not None for item in cohort_inputs(runtime, DATASET, studies, spec))

        decrypt.keep(*clock(decrypt_all))
        transform.keep(*clock(transform_all))
        both.keep(*clock(both_ways))
        round_steps = decrypt_steps(runtime, studies)
        if not steps or sum(round_steps.values()) < sum(steps.values()):
            steps = round_steps
    return Prepared(
        name,
        spec,
        studies,
        instances,
        size,
        decrypt,
        steps,
        transform,
        both,
        inputs,
        len(studies) - len(inputs),
    )


def print_data(prepared: list[Prepared]) -> None:
    print(
        f"\ndata path: decryption and transforms, best round (times are for all the studies of the spec)\n"
        f"  {'spec / step':<58} {'studies':>7} {'seconds':>8} {'studies/s':>10} {'MB/s':>8}"
    )
    for item in prepared:
        count, megabytes = len(item.studies), item.plain_bytes / 1e6
        print(
            f"  {item.name}: {count} studies, {item.instances} instances, {megabytes:.1f} MB decrypted, "
            f"{len(item.inputs)} tensors of {tuple(item.inputs[0].tensor.shape) if item.inputs else '-'}"
            + (f", {item.skipped} skipped" if item.skipped else "")
        )
        rows = [
            ("decrypt + parse (decrypted_instances)", item.decrypt.seconds),
            *[(f"  of which {step}", seconds) for step, seconds in item.steps.items()],
            ("transform (study_tensor: pixels + MONAI)", item.transform.seconds),
            ("both (cohort_inputs)", item.both.seconds),
        ]
        for title, seconds in rows:
            rate = count / seconds if seconds > 0 else float("inf")
            mb_rate = f"{megabytes / seconds:8.1f}" if not title.startswith("transform") else f"{'':>8}"
            print(f"    {title:<56} {count:>7} {seconds:>8.3f} {rate:>10.1f} {mb_rate}")


# --- the models --------------------------------------------------------------------------------


@dataclass
class ModelCase:
    title: str
    manifest: Manifest
    package: bytes
    data: Prepared


def random_package(manifest: Manifest, seed: int) -> bytes:
    """A package of `manifest` with the network's own random initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(manifest)
    state = {key: tensor.detach().clone().contiguous() for key, tensor in model.state_dict().items()}
    return build_package(manifest, safetensors.torch.save(state))


def model_cases(prepared: dict[str, Prepared], chosen: list[str]) -> list[ModelCase]:
    cases = []
    if "demo" in chosen:
        manifest, weights = train_demo_model(seed=0, steps=3)
        spec_2d = prepared["2D 64x64 (CR/DX/CT)"]
        manifest = manifest.model_copy(update={"input": spec_2d.spec})
        cases.append(ModelCase("demo ResNet 2D 64x64", manifest, build_package(manifest, weights), spec_2d))
    if "densenet" in chosen:
        data = prepared["2D 128x128 (CR/DX/CT)"]
        manifest = Manifest(
            name="bench-densenet121",
            version="1.0.0",
            framework="monai",
            network=NetworkSpec(
                name="DenseNet121", parameters={"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
            ),
            weights="model.safetensors",
            input=data.spec,
            output=OutputSpec(kind="classification", labels=["normal", "abnormal"]),
        )
        cases.append(ModelCase("DenseNet121 2D 128x128", manifest, random_package(manifest, 1), data))
    if "segresnet" in chosen:
        data = prepared["3D 64x64x16 @4 mm (CT)"]
        manifest = Manifest(
            name="bench-segresnet",
            version="1.0.0",
            framework="monai",
            network=NetworkSpec(
                name="SegResNet",
                parameters={"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "init_filters": 8},
            ),
            weights="model.safetensors",
            input=data.spec,
            output=OutputSpec(kind="segmentation-statistics", labels=["background", "lesion"]),
        )
        cases.append(ModelCase("SegResNet 3D 64x64x16", manifest, random_package(manifest, 2), data))
    return cases


def bare_loop(
    model: torch.nn.Module, batches: list[torch.Tensor], count: int, device: torch.device, autocast: bool
) -> int:
    """`count` batches through `model` the plain way; the images it ran."""
    cuda = device.type == "cuda"
    images = 0
    with torch.inference_mode(), torch.autocast(device.type, enabled=autocast):
        for index in range(count):
            batch = batches[index % len(batches)]
            if cuda:
                batch = batch.to(device, non_blocking=True)
            output = model(batch).float().cpu()
            images += output.shape[0]
    return images


class RunnerHooks:
    """What connector.jobs.runner gives run_model, emulated on this database: `should_stop` (asked
    once per batch) reads the database at most once a second, and `on_batch` writes progress at
    most twice a second, as the runner's do."""

    def __init__(self, runtime: Runtime, every_seconds: float = 1.0) -> None:
        self.runtime = runtime
        self.every_seconds = every_seconds
        self._read_at = float("-inf")
        self._written_at = float("-inf")

    def read(self) -> bool:
        with self.runtime.sessions() as session:
            return bool(session.execute(select(DatasetRecord.name).where(DatasetRecord.name == "-")).scalar())

    def should_stop(self) -> bool:
        if time.monotonic() - self._read_at >= self.every_seconds:
            self._read_at = time.monotonic()
            return self.read()
        return False

    def on_batch(self, _count: int) -> None:
        if time.monotonic() - self._written_at < 0.5:  # as the runner: at most twice a second
            return
        self._written_at = time.monotonic()
        self.write()

    def write(self) -> None:
        with self.runtime.sessions() as session, session.begin():
            session.execute(
                update(DatasetRecord)
                .where(DatasetRecord.name == DATASET)
                .values(created_at=DatasetRecord.created_at)
            )


@dataclass
class ModelResult:
    case: ModelCase
    device: torch.device
    batch_size: int
    rows: list[tuple[str, Timing]]  # (key, timing)
    start_seconds: float
    network: str

    def rate(self, key: str) -> float:
        return next(timing.rate for name, timing in self.rows if name == key)

    @property
    def bare_rate(self) -> float:
        return max(timing.rate for name, timing in self.rows if name.startswith("bare"))


def cycled(items: list[T], count: int) -> list[T]:
    """`count` items: `items` over and over (references, not copies)."""
    return [items[index % len(items)] for index in range(count)]


def measure_model(
    case: ModelCase,
    runtime: Runtime,
    device: torch.device,
    batch_size: int,
    rounds: int,
    target_seconds: float,
    min_batches: int,
) -> ModelResult:
    data = case.data
    tensors = [item.tensor for item in data.inputs if item.tensor is not None]
    if not tensors:
        raise ValueError(f"no study of the cohort gives a tensor for {data.name}")
    cuda = device.type == "cuda"
    # The bare loop's batches, stacked beforehand from the same tensors (pinned for the copy on CUDA).
    stacked = cycled(tensors, -(-len(tensors) // batch_size) * batch_size)
    batches = [torch.stack(stacked[i : i + batch_size]) for i in range(0, len(stacked), batch_size)]
    if cuda:
        batches = [batch.pin_memory() for batch in batches]
    model = load_model(read_package(case.package))
    predictor = InProcessPredictor(model, device)  # moves the model to `device`, eval mode

    # Calibrate on the fastest of a few single batches (after a warm-up): enough images for about
    # `target_seconds` of the bare loop, at least `min_batches` batches, at most MAX_IMAGES.
    bare_loop(model, batches, 2, device, cuda)
    per_batch = min(clock(lambda: bare_loop(model, batches, 1, device, False))[0] for _ in range(5))
    count = max(min_batches, min(MAX_IMAGES // batch_size, int(target_seconds / per_batch)))
    images = count * batch_size
    job_inputs = cycled(data.inputs, images)
    hooks = RunnerHooks(runtime)

    # End to end: the cohort's studies cycled, enough for about twice `target_seconds`.
    per_study = data.decrypt_per_study + data.transform_per_study + per_batch / batch_size
    e2e_studies = max(min_batches * batch_size, min(4096, int(2 * target_seconds / per_study)))
    e2e_list = cycled(data.studies, e2e_studies)

    def job(predict: Predictor, inputs: Iterable[StudyInput], with_hooks: bool = False) -> int:
        _, stats = run_model(
            predict,
            case.manifest,
            inputs,
            batch_size=batch_size,
            on_batch=hooks.on_batch if with_hooks else None,
            should_stop=hooks.should_stop if with_hooks else None,
        )
        return stats.studies

    def one_thread_worker() -> int:
        # Diagnostic: the same sandboxed job with this (the worker's) process at one torch thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return job(sandbox, job_inputs)
        finally:
            torch.set_num_threads(threads)

    sandbox = SandboxedModel(case.package, SandboxLimits(device=str(device)))
    started = time.perf_counter()
    sandbox.start()
    start_seconds = time.perf_counter() - started
    pids = sandbox_pids()
    methods: dict[str, Callable[[], int]] = {
        "bare": lambda: bare_loop(model, batches, count, device, False),
        "in-process": lambda: job(predictor, job_inputs),
        "sandboxed": lambda: job(sandbox, job_inputs),
        "sandboxed+hooks": lambda: job(sandbox, job_inputs, with_hooks=True),
        "sandboxed, worker 1 thread": one_thread_worker,
        "sandbox alone": lambda: sum(sandbox(batches[i % len(batches)]).shape[0] for i in range(count)),
        "sandbox pipelined": lambda: sum(
            output.shape[0] for output in sandbox.map(batches[i % len(batches)] for i in range(count))
        ),
        "end to end": lambda: job(sandbox, cohort_inputs(runtime, DATASET, e2e_list, data.spec)),
    }
    if cuda:
        methods = {"bare autocast": lambda: bare_loop(model, batches, count, device, True), **methods}
    best = {key: Best() for key in methods}
    try:
        # A warm-up of each job path (the first batches allocate, in the sandbox too).
        job(predictor, job_inputs[: 2 * batch_size])
        job(sandbox, job_inputs[: 2 * batch_size])
        order = list(methods)
        for round_index in range(rounds):
            # Each round starts with another method, so that none always runs first or last.
            shift = round_index % len(order)
            for key in order[shift:] + order[:shift]:
                synchronise(device)
                best[key].keep(*clock_cpu(methods[key], pids))
    finally:
        sandbox.close()
    titles = {
        "bare": "bare loop: model(batch), inference_mode" + (", fp32" if cuda else ""),
        "bare autocast": "bare loop: model(batch), inference_mode, autocast",
        "in-process": "job in-process: run_model + InProcessPredictor",
        "sandboxed": "job sandboxed: run_model + SandboxedModel",
        "sandboxed+hooks": "job sandboxed + the runner's DB hooks (emulated)",
        "sandboxed, worker 1 thread": "diagnostic: job sandboxed, worker process at 1 torch thread",
        "sandbox alone": "diagnostic: SandboxedModel(batch) alone, one at a time",
        "sandbox pipelined": "diagnostic: SandboxedModel.map alone, pipelined",
        "end to end": f"end to end: cohort_inputs ({e2e_studies} studies) + sandboxed job",
    }
    rows = [
        (
            key,
            Timing(
                titles[key],
                best[key].count,
                best[key].seconds,
                best[key].median_rate,
                best[key].cpu_per_item,
                statistics.median(best[key].others),
            ),
        )
        for key in methods
    ]
    return ModelResult(case, device, batch_size, rows, start_seconds, sandbox.network)


def print_models(results: list[ModelResult], rounds: int) -> None:
    print(
        f"\nmodels: images/s on the same prepared tensors; best of {rounds} rounds (methods interleaved "
        f"within a round), median of the rounds beside it; CPU ms per image of the worker and model\n"
        f"  processes together, over all rounds; 'others': median share of the cores that other processes\n"
        f"  on the machine took during the rounds\n"
        f"  {'model / method':<66} {'images':>7} {'seconds':>8} {'images/s':>9} {'median':>8} {'/ bare':>7}"
        f" {'CPU ms':>7} {'others':>7}"
    )
    for result in results:
        print(
            f"  {result.case.title} on {result.device}, batch {result.batch_size}"
            f" (sandbox network isolation: {result.network or '-'})"
        )
        for _key, timing in result.rows:
            print(
                f"    {timing.method:<64} {timing.images:>7} {timing.seconds:>8.3f} {timing.rate:>9.1f}"
                f" {timing.median_rate:>8.1f} {timing.rate / result.bare_rate:>7.2f}"
                f" {timing.cpu_per_image * 1e3:>7.2f} {timing.others:>7.0%}"
            )
        print(
            f"    {'sandbox start: load, check, dry run (once per job)':<64} {'-':>7}"
            f" {result.start_seconds:>8.3f}"
        )


def print_where(results: list[ModelResult]) -> None:
    print("\nwhere the time goes, end to end, per image (decrypt and transform from the data path alone)")
    for result in results:
        data = result.case.data
        decrypt = data.decrypt_per_study
        transform = data.transform_per_study
        model = 1 / result.rate("sandboxed")
        total = decrypt + transform + model
        measured = 1 / result.rate("end to end")
        print(
            f"  {result.case.title} on {result.device}: decrypt {100 * decrypt / total:.0f}% "
            f"({decrypt * 1e3:.2f} ms), transform {100 * transform / total:.0f}% ({transform * 1e3:.2f} ms), "
            f"model (sandboxed job) {100 * model / total:.0f}% ({model * 1e3:.2f} ms); end to end "
            f"{measured * 1e3:.2f} ms/image, the parts one after the other {total * 1e3:.2f} ms "
            f"(hidden by the prefetch overlap: {max(0.0, 100 * (1 - measured / total)):.0f}%)"
        )


def print_verdicts(results: list[ModelResult], hooks: tuple[float, float]) -> None:
    print(
        "\nratios: images/s of the job / images/s of the best bare loop; job overhead per batch "
        "(job's seconds per batch minus the bare loop's)"
    )
    for result in results:
        bare = result.bare_rate
        parts = []
        for key, label in (
            ("in-process", "in-process"),
            ("sandboxed", "sandboxed"),
            ("sandboxed+hooks", "sandboxed + runner hooks"),
            ("sandboxed, worker 1 thread", "sandboxed, worker at 1 thread"),
            ("sandbox alone", "sandbox alone"),
            ("sandbox pipelined", "sandbox alone pipelined"),
        ):
            extra = result.batch_size * (1 / result.rate(key) - 1 / bare) * 1e3
            parts.append(f"{label} {result.rate(key) / bare:.2f} ({extra:+.1f} ms/batch)")
        parts.append(f"end to end {result.rate('end to end') / bare:.2f}")
        print(f"  {result.case.title} on {result.device}: " + ", ".join(parts))
        cpu = {key: timing.cpu_per_image for key, timing in result.rows}
        bare_cpu = min(value for key, value in cpu.items() if key.startswith("bare"))
        print(
            f"    CPU per image, bare / job: in-process {bare_cpu / cpu['in-process']:.2f}, "
            f"sandboxed {bare_cpu / cpu['sandboxed']:.2f}, "
            f"sandboxed with the worker at 1 thread {bare_cpu / cpu['sandboxed, worker 1 thread']:.2f}"
        )
    read, write = hooks
    print(
        f"  the runner's hooks on this database, alone (median): cancel check {read * 1e3:.2f} ms "
        "per read (at most once a second), "
        f"progress write {write * 1e3:.2f} ms (at most twice a second)"
    )
    print()
    for result in results:
        ratio = result.rate("sandboxed") / result.bare_rate
        verdict = "met" if ratio >= GOAL_RATIO else "MISSED"
        others = max(timing.others for key, timing in result.rows if key in ("bare", "sandboxed"))
        busy = f" (other work took {others:.0%} of the cores meanwhile: noisy)" if others > 0.1 else ""
        print(
            f"verdict: {result.case.title} on {result.device}: job (sandboxed) / bare loop = {ratio:.2f} "
            f"(goal >= {GOAL_RATIO:.2f}): {verdict}{busy}"
        )


def hook_costs(runtime: Runtime, calls: int = 50) -> tuple[float, float]:
    """Median seconds of the runner's cancel check (a read) and of its progress write."""
    hooks = RunnerHooks(runtime)
    reads = [clock(lambda: int(hooks.read()))[0] for _ in range(calls)]
    writes = [clock(lambda: (hooks.write(), 0)[1])[0] for _ in range(calls)]
    return statistics.median(reads), statistics.median(writes)


def load_line() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


# --- main --------------------------------------------------------------------------------------


def devices_for(choice: str, cpu_too: bool) -> Iterator[torch.device]:
    first = choose_device(choice)
    yield first
    if first.type == "cuda" and cpu_too:
        yield torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of each timing; the best is kept.")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="About how long one round of a model timing runs."
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-batches", type=int, default=2, help="Fewest batches in a model timing.")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--no-cpu", action="store_true", help="On CUDA, measure the models on the GPU only (not the CPU too)."
    )
    parser.add_argument(
        "--models",
        default="demo,densenet,segresnet",
        help="Comma-separated: demo, densenet, segresnet (default: all three).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="8 patients, 3 rounds of about 0.2 s, at least 2 batches."
    )
    args = parser.parse_args()
    if args.quick:
        args.patients, args.rounds, args.seconds, args.min_batches = 8, 3, 0.2, 2
    chosen = [name.strip() for name in args.models.split(",") if name.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA was asked for but torch sees no GPU; measuring on the CPU.")
        args.device = "cpu"
    devices = list(devices_for(args.device, not args.no_cpu))
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads{gpu}; "
        f"devices measured: {', '.join(str(device) for device in devices)}"
    )
    print(f"machine at the start: {load_line()} (the 'others' column below says how busy it was)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        runtime, everyone, line = build_cohort(Path(folder), args.patients, args.seed)
        print(f"cohort: {line}")
        # The 64x64 2D and the 3D specs always (the data path's report); 128x128 for DenseNet121.
        needed = {
            "2D 64x64 (CR/DX/CT)": True,
            "2D 128x128 (CR/DX/CT)": "densenet" in chosen,
            "3D 64x64x16 @4 mm (CT)": True,
        }
        prepared = {
            name: prepare(runtime, everyone, name, min(args.rounds, 3)) for name in SPECS if needed[name]
        }
        print_data(list(prepared.values()))
        cases = model_cases(prepared, chosen)
        results = []
        for device in devices:
            for case in cases:
                print(
                    f"  [{time.perf_counter() - started:5.0f} s] measuring {case.title} on {device} ...",
                    flush=True,
                )
                try:
                    results.append(
                        measure_model(
                            case,
                            runtime,
                            device,
                            args.batch_size,
                            args.rounds,
                            args.seconds,
                            args.min_batches,
                        )
                    )
                except Exception as exc:  # reported, and the other measurements go on
                    print(f"  {case.title} on {device} could not be measured: {type(exc).__name__}: {exc}")
        hooks = hook_costs(runtime)
        runtime.close()
    print_models(results, args.rounds)
    print_where(results)
    print_verdicts(results, hooks)
    print(f"\nmachine at the end: {load_line()}; whole run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
