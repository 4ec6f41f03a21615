"""End-to-end ingest (de-identify, encrypt, store, index) against de-identification alone.

Goal from the encrypted-storage issue: encryption and storage should cost under 20% of the
de-identification's throughput. Both run in this one process on the same synthetic corpus, same
options and workers, local object store (a fresh data folder per ingest, so every object is
really sealed, stored and indexed). Each side compiles its recipe inside its timing, as
`connector deid` and `connector ingest` both do. The two alternate over several rounds (the
first one of each round swapped every round), so that load from other processes on a shared
machine hits both alike; the verdict uses the best round of each side, and the spread of the
per-round ratios is shown beside it. The CPU time each side used (this process and its worker
processes) is shown too: it moves far less than wall time when other processes compete for the
cores. It prints the numbers and a verdict; it never asserts.

    python benchmarks/ingest.py [--files 1000] [--workers 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script from anywhere: the project's packages, not this folder, come first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from connector.datasets.ingest import ingest  # noqa: E402
from connector.deid.batch import run_batch  # noqa: E402
from connector.deid.keys import DatasetKeys  # noqa: E402
from connector.deid.options import DEFAULT_OPTIONS  # noqa: E402
from connector.deid.recipes import compile_recipes  # noqa: E402
from connector.runtime import build_runtime  # noqa: E402
from connector.settings import load_settings  # noqa: E402
from connector.synth import count_files, generate_cohort  # noqa: E402

GOAL_OVERHEAD = 0.20


def cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def deidentify_alone(root: Path, run: int, workers: int) -> tuple[int, float, float]:
    cpu = cpu_seconds()
    started = time.perf_counter()
    summary = run_batch(
        root / "cohort",
        root / f"deid-{run}",
        compile_recipes(DEFAULT_OPTIONS),
        DatasetKeys(secrets.token_bytes(32)),
        root / f"q-deid-{run}",
        "bench",
        workers=workers,
    )
    return summary.written, time.perf_counter() - started, cpu_seconds() - cpu


def ingest_all(root: Path, run: int, workers: int) -> tuple[int, float, float]:
    runtime = build_runtime(load_settings(data_dir=root / f"data-{run}"))
    try:
        cpu = cpu_seconds()
        started = time.perf_counter()
        summary = ingest(
            runtime, root / "cohort", "bench", DEFAULT_OPTIONS, root / f"q-ingest-{run}", workers
        )
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
    finally:
        runtime.close()
    if summary.already_stored:
        raise RuntimeError(
            "the benchmark's ingest found objects already stored: its data folder was not fresh"
        )
    return summary.stored, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    per_patient = count_files(1)
    patients = max(1, -(-args.files // per_patient))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temp:
        root = Path(temp)
        cohort = generate_cohort(root / "cohort", patients, seed=7)
        print(
            f"corpus: {cohort.files} files, {cohort.bytes / 1e6:.1f} MB ({patients} patients); "
            f"workers {args.workers}; {args.rounds} rounds; options {', '.join(DEFAULT_OPTIONS)}"
        )
        deid_runs: list[tuple[int, float, float]] = []
        ingest_runs: list[tuple[int, float, float]] = []
        for run in range(max(1, args.rounds)):
            steps = [
                lambda run=run: deid_runs.append(deidentify_alone(root, run, args.workers)),
                lambda run=run: ingest_runs.append(ingest_all(root, run, args.workers)),
            ]
            for step in steps if run % 2 == 0 else reversed(steps):
                step()

    print(f"{'round':<7}{'de-identification files/s':>27}{'ingest files/s':>16}{'ratio':>8}{'CPU ratio':>11}")
    ratios = []
    cpu_ratios = []
    for run, (deid, ingested) in enumerate(zip(deid_runs, ingest_runs, strict=True)):
        (deid_files, deid_s, deid_cpu), (ingest_files, ingest_s, ingest_cpu) = deid, ingested
        ratio = (ingest_files / ingest_s) / (deid_files / deid_s)
        cpu_ratio = (ingest_cpu / ingest_files) / (deid_cpu / deid_files)
        ratios.append(ratio)
        cpu_ratios.append(cpu_ratio)
        rates = f"{deid_files / deid_s:>27.1f}{ingest_files / ingest_s:>16.1f}"
        print(f"{run + 1:<7}{rates}{ratio:>8.2f}{cpu_ratio:>11.2f}")
    deid_files, deid_seconds, deid_cpu = min(deid_runs, key=lambda item: item[1])
    ingest_files, ingest_seconds, ingest_cpu = min(ingest_runs, key=lambda item: item[1])
    deid_rate = deid_files / deid_seconds
    ingest_rate = ingest_files / ingest_seconds
    overhead = 1 - ingest_rate / deid_rate
    print()
    print(f"{'step (best round)':<46}{'files':>7}{'s':>9}{'files/s':>10}{'CPU ms/file':>13}")
    print(
        f"{'de-identification alone (run_batch)':<46}{deid_files:>7}{deid_seconds:>9.2f}{deid_rate:>10.1f}"
        f"{deid_cpu / deid_files * 1000:>13.2f}"
    )
    print(
        f"{'ingest: de-identify + encrypt + store + index':<46}{ingest_files:>7}{ingest_seconds:>9.2f}"
        f"{ingest_rate:>10.1f}{ingest_cpu / ingest_files * 1000:>13.2f}"
    )
    print(
        f"ratio ingest / de-identification, best rounds: {ingest_rate / deid_rate:.2f} "
        f"(encryption, storage and indexing cost {overhead:.0%}); per round: "
        f"{min(ratios):.2f} to {max(ratios):.2f}, median {statistics.median(ratios):.2f}"
    )
    print(
        f"CPU time per file, ingest / de-identification: median {statistics.median(cpu_ratios):.2f} "
        f"({min(cpu_ratios):.2f} to {max(cpu_ratios):.2f})"
    )
    met = overhead < GOAL_OVERHEAD
    verdict = "goal met" if met else "goal missed"
    print(f"verdict: encryption and storage cost under {GOAL_OVERHEAD:.0%}: {verdict}")


if __name__ == "__main__":
    main()
