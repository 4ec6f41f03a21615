"""End-to-end ingest (de-identify, encrypt, store, index) against de-identification alone.

Goal from the encrypted-storage issue: encryption and storage should cost under 20% of the
de-identification's throughput. Both run in this one process run on the same synthetic corpus,
same options and workers, local object store. It prints the numbers and a verdict; it never asserts.

    python benchmarks/ingest.py [--files 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import secrets
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    per_patient = count_files(1)
    patients = max(1, -(-args.files // per_patient))
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as temp:
        root = Path(temp)
        cohort = generate_cohort(root / "cohort", patients, seed=7)
        print(
            f"corpus: {cohort.files} files, {cohort.bytes / 1e6:.1f} MB ({patients} patients); "
            f"workers {args.workers}; options {', '.join(DEFAULT_OPTIONS)}"
        )

        started = time.perf_counter()
        deid = run_batch(
            root / "cohort",
            root / "deid",
            compile_recipes(DEFAULT_OPTIONS),
            DatasetKeys(secrets.token_bytes(32)),
            root / "q1",
            "bench",
            workers=args.workers,
        )
        deid_seconds = time.perf_counter() - started

        runtime = build_runtime(load_settings(data_dir=root / "data"))
        started = time.perf_counter()
        summary = ingest(runtime, root / "cohort", "bench", DEFAULT_OPTIONS, root / "q2", args.workers)
        ingest_seconds = time.perf_counter() - started
        runtime.close()

    deid_rate = deid.written / deid_seconds
    ingest_rate = summary.stored / ingest_seconds
    overhead = 1 - ingest_rate / deid_rate
    print(f"{'step':<46}{'files':>7}{'s':>9}{'files/s':>10}")
    print(
        f"{'de-identification alone (run_batch)':<46}{deid.written:>7}{deid_seconds:>9.2f}{deid_rate:>10.1f}"
    )
    print(
        f"{'ingest: de-identify + encrypt + store + index':<46}{summary.stored:>7}{ingest_seconds:>9.2f}"
        f"{ingest_rate:>10.1f}"
    )
    print(
        f"ratio ingest / de-identification: {ingest_rate / deid_rate:.2f} "
        f"(encryption, storage and indexing cost {overhead:.0%})"
    )
    print(
        f"verdict: encryption and storage cost under 20%: {'goal met' if overhead < 0.20 else 'goal missed'}"
    )


if __name__ == "__main__":
    main()
