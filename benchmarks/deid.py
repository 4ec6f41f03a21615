"""Benchmark: `connector deid` against the `deid` library and the pydicom read+write floor, one run.

Generates a synthetic identified cohort of at least ``--files`` DICOM files in a temporary folder,
then measures on those same files, in this one run:

* ours: ``run_batch`` with the default profile options, with ``--workers`` processes and with one
  (the per-core number), each in a fresh interpreter so that its peak memory (max RSS of the parent
  and of the largest worker) is its own; ours is also run on half of the corpus to show whether the
  peak memory stays flat in the number of files (the parent's peak is also shown as it stood
  before the batch, after the imports and the plan compilation, which often set it);
* the floor: plain pydicom ``dcmread`` + ``dcmwrite`` to a file of every input, in one process (the
  per-core floor) and over a pool of ``--workers`` processes (the both-cores floor);
* the ``deid`` library: ``replace_identifiers`` with its default recipe, one process, timed on a
  sample of the first ``--deid-sample`` files only (it is slow), in an empty working directory.

Prints files/s and MB/s (MB = 10**6 input bytes) for each, the ratios the performance goal names and
one verdict line per goal. Each method's CPU time (user + system, of its own processes and of the
workers they waited for) is printed too, with the same ratios per CPU second: when other work shares
the cores, wall-clock ratios of methods timed one after the other swing with that work, CPU time per
file much less. It never asserts: it always exits 0 once the measurements ran.

    python benchmarks/deid.py --files 2000 --workers 2 --deid-sample 200
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread, dcmwrite

from connector.deid.batch import input_files, run_batch
from connector.deid.engine import Refused, deidentify
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.recipes import compile_recipes
from connector.synth import MANIFEST_NAME, count_files, generate_cohort

GOAL_VS_DEID = 10.0  # ours (all workers) at least 10x the deid library
GOAL_VS_FLOOR = 1 / 1.5  # ours within 1.5x of the read+write floor per core
FLAT_MEMORY = 1.2  # peak RSS at the full corpus at most 1.2x the peak at half of it


@dataclass
class Timing:
    label: str
    files: int
    bytes_in: int
    seconds: float
    cpu_seconds: float  # user + system time of the method's processes

    @property
    def cpu_ms_per_file(self) -> float:
        return self.cpu_seconds * 1e3 / self.files if self.files else float("inf")

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Probe:
    """One run of ours in a fresh interpreter: its timing, outcomes and peak memory."""

    timing: Timing
    written: int
    quarantined: int
    skipped: int
    maxrss_parent_mb: float
    maxrss_children_mb: float
    maxrss_before_batch_mb: float
    quarantine_reasons: dict[str, int]


# --- ours, in a fresh interpreter -------------------------------------------------------------


def _probe_main(in_dir: Path, out_dir: Path, workers: int) -> None:
    """Child side of `measure_ours`: run the batch, print one JSON line, nothing else on stdout."""
    warnings.simplefilter("ignore")
    plan = compile_recipes(DEFAULT_OPTIONS)
    keys = DatasetKeys(secrets.token_bytes(32))
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports and the compiled plan
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    summary = run_batch(in_dir, out_dir / "out", plan, keys, out_dir / "quarantine", "bench", workers=workers)
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds() - cpu_before  # the workers are waited for when run_batch closes its pool
    # Linux reports ru_maxrss in KiB; RUSAGE_CHILDREN is the largest waited-for child.
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "written": summary.written,
        "quarantined": summary.quarantined,
        "skipped": summary.skipped,
        "inputs": summary.report["inputs"],
        "bytes_in": summary.report["bytes_in"],
        "maxrss_self_kb": self_kb,
        "maxrss_before_batch_kb": before_kb,
        "quarantine_reasons": summary.report["quarantine_reasons"],
        "maxrss_children_kb": children_kb,
    }
    print(json.dumps(result))


def measure_ours(label: str, in_dir: Path, scratch: Path, workers: int) -> Probe:
    out_dir = Path(tempfile.mkdtemp(prefix="ours-", dir=scratch))
    try:
        script = str(Path(__file__).resolve())
        command = [sys.executable, script, "--probe", str(in_dir), str(out_dir), str(workers)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the run_batch probe failed:\n{done.stderr}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    data = json.loads(done.stdout.strip().splitlines()[-1])
    timing = Timing(label, data["inputs"], data["bytes_in"], data["seconds"], data["cpu_seconds"])
    return Probe(
        timing,
        data["written"],
        data["quarantined"],
        data["skipped"],
        data["maxrss_self_kb"] / 1024,
        data["maxrss_children_kb"] / 1024,
        data["maxrss_before_batch_kb"] / 1024,
        data["quarantine_reasons"],
    )


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of the children it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# --- the floor: plain pydicom read + write ----------------------------------------------------


def _read_write(job: tuple[str, str]) -> None:
    dcmwrite(job[1], dcmread(job[0]))


def measure_floor(label: str, paths: list[Path], scratch: Path, workers: int) -> Timing:
    out_dir = Path(tempfile.mkdtemp(prefix="floor-", dir=scratch))
    jobs = [(str(path), str(out_dir / f"{index:06d}.dcm")) for index, path in enumerate(paths)]
    try:
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        if workers == 1:
            for job in jobs:
                _read_write(job)
        else:
            # The same pool shape as run_batch: fork, ordered imap, the same chunk size.
            chunksize = max(1, min(64, len(jobs) // (workers * 8) or 1))
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for _ in pool.imap(_read_write, jobs, chunksize=chunksize):
                    pass
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return Timing(label, len(paths), sum(path.stat().st_size for path in paths), seconds, cpu)


# --- the deid library ---------------------------------------------------------------------------


def measure_deid_library(paths: list[Path], scratch: Path) -> tuple[Timing, int]:
    """Seconds for deid's replace_identifiers (default recipe) over `paths`, and how many failed."""
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers
    from deid.logger import bot

    bot.level = 0  # QUIET
    workdir = Path(tempfile.mkdtemp(prefix="deid-cwd-", dir=scratch))  # no ./dicom/deid* to pick up
    out_dir = Path(tempfile.mkdtemp(prefix="deid-out-", dir=scratch))
    previous = Path.cwd()
    failed = 0
    os.chdir(workdir)
    try:
        recipe = DeidRecipe()
        cpu_before = _cpu_seconds()
        started = time.perf_counter()
        for path in paths:
            try:
                replace_identifiers(
                    [str(path)], deid=recipe, save=True, output_folder=str(out_dir), overwrite=True
                )
            except Exception:  # a file deid cannot handle still costs its time; count it
                failed += 1
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu_before
    finally:
        os.chdir(previous)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    label = f"deid replace_identifiers, 1 process (SAMPLE of {len(paths)})"
    return Timing(label, len(paths), sum(path.stat().st_size for path in paths), seconds, cpu), failed


# --- profiling ------------------------------------------------------------------------------------


def profile_engine(paths: list[Path], top: int = 15) -> str:
    """cProfile of `deidentify` over `paths` in this process: top entries by cumulative time."""
    plan = compile_recipes(DEFAULT_OPTIONS)
    keys = DatasetKeys(secrets.token_bytes(32))
    profiler = cProfile.Profile()
    profiler.enable()
    for path in paths:
        with contextlib.suppress(Refused):
            deidentify(path, plan, keys)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("cumulative")
    stats.print_stats(r"connector/|pydicom/", top)
    return stream.getvalue()


# --- corpus ---------------------------------------------------------------------------------------


def build_corpus(root: Path, files: int, seed: int) -> tuple[Path, list[Path], int]:
    """Generate the cohort; return its folder, its DICOM files in run_batch's order, and patients."""
    patients = 1
    while count_files(patients) < files:
        patients += max(1, (files - count_files(patients)) // 40)
    cohort = root / "cohort"
    generate_cohort(cohort, patients, seed=seed)
    (cohort / MANIFEST_NAME).unlink(missing_ok=True)  # every method then sees exactly the DICOM files
    return cohort, input_files(cohort, ()), patients


def half_corpus(cohort: Path, root: Path) -> Path:
    """Hard links to the first half of the patients' folders: half the files, same kind of files."""
    half = root / "half"
    patients = sorted(path for path in cohort.iterdir() if path.is_dir())
    for patient in patients[: max(1, len(patients) // 2)]:
        for source in patient.rglob("*"):
            if source.is_file():
                target = half / source.relative_to(cohort)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    return half


# --- one round, and the report --------------------------------------------------------------------


def _measure_round(
    cohort: Path, half: Path, paths: list[Path], root: Path, workers: int
) -> tuple[Timing, Probe, Timing, Probe, Probe]:
    """One round: floor and ours on one core, floor and ours on `workers`, ours on the half corpus."""
    floor_1 = measure_floor("floor: pydicom dcmread+dcmwrite, 1 process", paths, root, 1)
    ours_1 = measure_ours("ours: run_batch, 1 worker", cohort, root, 1)
    floor_n = measure_floor(f"floor: pydicom dcmread+dcmwrite, {workers} processes", paths, root, workers)
    ours_n = measure_ours(f"ours: run_batch, {workers} workers", cohort, root, workers)
    ours_half = measure_ours(f"ours: run_batch, {workers} workers, half corpus", half, root, workers)
    return floor_1, ours_1, floor_n, ours_n, ours_half


def _best(best: Timing, new: Timing) -> Timing:
    return new if new.seconds < best.seconds else best


def _best_probe(best: Probe, new: Probe) -> Probe:
    """The fastest run's timing, and the highest peak memory of all runs."""
    fastest = new if new.timing.seconds < best.timing.seconds else best
    fastest.maxrss_parent_mb = max(best.maxrss_parent_mb, new.maxrss_parent_mb)
    fastest.maxrss_children_mb = max(best.maxrss_children_mb, new.maxrss_children_mb)
    return fastest


def _load() -> str:
    return "/".join(f"{value:.2f}" for value in os.getloadavg())


def _row(timing: Timing) -> str:
    return (
        f"  {timing.label:<52} {timing.files:>6} {timing.bytes_in / 1e6:>7.1f} {timing.seconds:>7.2f} "
        f"{timing.files_per_s:>8.1f} {timing.mb_per_s:>7.2f} {timing.cpu_seconds:>7.2f} "
        f"{timing.cpu_ms_per_file:>8.2f}"
    )


def _verdict(ok: bool) -> str:
    return "goal met" if ok else "goal missed"


def report(
    rows: list[Timing],
    ratios: dict[str, float],
    cpu_ratios: dict[str, float],
    probes: dict[str, Probe],
    extra: list[str],
) -> None:
    print(
        f"  {'method':<52} {'files':>6} {'MB in':>7} {'s':>7} {'files/s':>8} {'MB/s':>7} "
        f"{'CPU s':>7} {'CPU ms/f':>8}"
    )
    for timing in rows:
        print(_row(timing))
    for line in extra:
        print(line)
    print()
    print("ratios (files/s):")
    for name, value in ratios.items():
        print(f"  {name:<60} {value:>7.2f}")
    print()
    print("the same ratios per CPU second (files per CPU second: steadier when other work shares the cores):")
    for name, value in cpu_ratios.items():
        print(f"  {name:<60} {value:>7.2f}")
    print()
    print("peak memory of ours (max RSS, MB):")
    print(f"  {'run':<40} {'parent':>8} {'(before batch)':>15} {'largest worker':>15}")
    for name, probe in probes.items():
        worker = f"{probe.maxrss_children_mb:.1f}" if probe.maxrss_children_mb else "(none)"
        before = f"({probe.maxrss_before_batch_mb:.1f})"
        print(f"  {name:<40} {probe.maxrss_parent_mb:>8.1f} {before:>15} {worker:>15}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="at least this many synthetic files")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for the both-cores runs")
    parser.add_argument("--deid-sample", type=int, default=200, help="files timed with the deid library")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time ours and the floor N times; best kept")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also cProfile the engine in one process over the first N files",
    )
    parser.add_argument("--probe", nargs=3, metavar=("IN", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        _probe_main(Path(args.probe[0]), Path(args.probe[1]), int(args.probe[2]))
        return
    warnings.simplefilter("ignore")
    workers = max(1, args.workers)

    with tempfile.TemporaryDirectory(prefix="deid-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        cohort, paths, patients = build_corpus(root, args.files, args.seed)
        generated = time.perf_counter() - started
        half = half_corpus(cohort, root)
        total_bytes = sum(path.stat().st_size for path in paths)
        print(
            f"cores: {os.cpu_count()}, workers: {workers}, repeat: {max(1, args.repeat)} (best kept), "
            f"load average before: {_load()}"
        )
        print(f"options: {', '.join(DEFAULT_OPTIONS)}")
        print(
            f"corpus: {len(paths)} synthetic identified DICOM files ({patients} patients), "
            f"{total_bytes / 1e6:.1f} MB, mean {total_bytes / max(1, len(paths)) / 1e3:.1f} kB/file "
            f"(generated in {generated:.1f} s)"
        )
        print()

        floor_1, ours_1, floor_n, ours_n, ours_half = _measure_round(cohort, half, paths, root, workers)
        for _ in range(max(1, args.repeat) - 1):
            again = _measure_round(cohort, half, paths, root, workers)
            floor_1, floor_n = _best(floor_1, again[0]), _best(floor_n, again[2])
            ours_1, ours_n, ours_half = (
                _best_probe(ours_1, again[1]),
                _best_probe(ours_n, again[3]),
                _best_probe(ours_half, again[4]),
            )
        deid_timing, deid_failed = measure_deid_library(paths[: max(1, args.deid_sample)], root)
        profile = profile_engine(paths[: args.profile]) if args.profile > 0 else ""

    rows = [floor_1, ours_1.timing, floor_n, ours_n.timing, ours_half.timing, deid_timing]
    extra = [
        f"  deid library: timed on a SAMPLE of the first {deid_timing.files} files, not the whole corpus; "
        f"{deid_failed} raised",
    ]
    ratio_deid = ours_n.timing.files_per_s / deid_timing.files_per_s
    ratio_core = ours_1.timing.files_per_s / floor_1.files_per_s
    ratio_both = ours_n.timing.files_per_s / floor_n.files_per_s
    ratios = {
        f"ours ({workers} workers) / deid library (1 process, sample)": ratio_deid,
        f"ours (1 worker) / floor (1 process)   [goal >= {GOAL_VS_FLOOR:.2f}]": ratio_core,
        f"ours ({workers} workers) / floor ({workers} processes) [goal >= {GOAL_VS_FLOOR:.2f}]": ratio_both,
        f"ours {workers} workers / ours 1 worker (scaling)": ours_n.timing.files_per_s
        / ours_1.timing.files_per_s,
        f"floor {workers} processes / floor 1 process (scaling)": floor_n.files_per_s / floor_1.files_per_s,
    }
    # Files per CPU second of one over the other: the inverse ratio of CPU time per file.
    cpu_ratio_deid = deid_timing.cpu_ms_per_file / ours_n.timing.cpu_ms_per_file
    cpu_ratio_core = floor_1.cpu_ms_per_file / ours_1.timing.cpu_ms_per_file
    cpu_ratio_both = floor_n.cpu_ms_per_file / ours_n.timing.cpu_ms_per_file
    names = list(ratios)  # the same three comparisons, in the same words
    cpu_ratios = {names[0]: cpu_ratio_deid, names[1]: cpu_ratio_core, names[2]: cpu_ratio_both}
    probes = {
        f"1 worker, {ours_1.timing.files} files": ours_1,
        f"{workers} workers, {ours_half.timing.files} files (half)": ours_half,
        f"{workers} workers, {ours_n.timing.files} files (full)": ours_n,
    }
    for probe in (ours_1, ours_n, ours_half):
        extra.append(
            f"  {probe.timing.label} -> written {probe.written}, quarantined {probe.quarantined}"
            f"{f' {probe.quarantine_reasons}' if probe.quarantine_reasons else ''}, skipped {probe.skipped}"
        )
    extra.append(f"  load average after: {_load()} (other work on these cores skews every number above)")
    report(rows, ratios, cpu_ratios, probes, extra)
    parent_growth = ours_n.maxrss_parent_mb / ours_half.maxrss_parent_mb
    worker_growth = ours_n.maxrss_children_mb / max(ours_half.maxrss_children_mb, 1e-9)
    print(
        f"  full / half: parent {parent_growth:.2f}x, largest worker {worker_growth:.2f}x "
        f"[flat: <= {FLAT_MEMORY:.1f}x]"
    )
    if profile:
        print()
        print(
            f"cProfile of connector.deid.engine.deidentify, 1 process, {args.profile} files "
            "(top entries by cumulative time, connector/ and pydicom/ only):"
        )
        print(profile)
    print()
    print(
        f"verdict: >= {GOAL_VS_DEID:.0f}x the deid library ({ratio_deid:.1f}x): "
        f"{_verdict(ratio_deid >= GOAL_VS_DEID)}"
    )
    print(
        f"verdict: within 1.5x of the floor per core ({ratio_core:.2f}): "
        f"{_verdict(ratio_core >= GOAL_VS_FLOOR)}"
    )
    print(
        f"verdict: within 1.5x of the floor on {workers} cores ({ratio_both:.2f}): "
        f"{_verdict(ratio_both >= GOAL_VS_FLOOR)}"
    )
    print(
        f"  cross-check by CPU time per file: {cpu_ratio_deid:.1f}x the deid library per CPU second, "
        f"{cpu_ratio_core:.2f} of the floor on 1 core, {cpu_ratio_both:.2f} on {workers}"
    )
    flat = max(parent_growth, worker_growth) <= FLAT_MEMORY
    print(
        f"verdict: peak memory flat in the number of files (x{max(parent_growth, worker_growth):.2f}): "
        f"{_verdict(flat)}"
    )


def _unshadow_deid_library() -> None:
    """Run as a script, this file's folder leads sys.path and its name would shadow the deid library."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]


if __name__ == "__main__":
    _unshadow_deid_library()
    main()
