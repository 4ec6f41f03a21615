"""Generates a whole synthetic cohort: one task per patient on a process pool, then the manifest.

Workers write files; the parent only counts progress and writes ``synth-manifest.json``. Output
is independent of the number of workers and of completion order. This module never reads the
clock to make data and never calls a progress callback from a worker process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from connector.synth.manifest import MANIFEST_NAME, WrittenFile, write_manifest
from connector.synth.patient import PatientResult, synthesise_patient
from connector.synth.plan import count_files


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate_cohort`` wrote."""

    out_dir: Path
    patients: int
    studies: int
    series: int
    files: int
    bytes: int
    manifest: Path


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: safe when the caller runs threads (a rich progress bar, a web server), and the
    # preload makes each worker a cheap fork of a process that already imported pydicom and numpy.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["connector.synth.patient"])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context)


def _run_pool(
    out_dir: Path, patients: int, seed: int, workers: int, progress: Callable[[int], None] | None
) -> list[PatientResult]:
    results: list[PatientResult] = []
    with _pool(workers) as pool:
        # Keep a bounded number of patients in flight so memory stays flat for huge cohorts.
        pending: set[Future[PatientResult]] = set()
        next_index = 0
        while next_index < patients or pending:
            while next_index < patients and len(pending) < workers * 4:
                pending.add(pool.submit(synthesise_patient, str(out_dir), seed, next_index))
                next_index += 1
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                results.append(result)
                if progress is not None:
                    progress(len(result.files))
    return results


def generate_cohort(
    out_dir: Path,
    patients: int,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SynthSummary:
    """Write ``count_files(patients)`` identified DICOM files and their PHI manifest under ``out_dir``.

    The same ``seed`` gives byte-identical files; ``progress(n)`` is called in this process with the
    number of files each finished patient added.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), patients))
    if workers == 1:
        results = []
        for index in range(patients):
            result = synthesise_patient(str(out_dir), seed, index)
            results.append(result)
            if progress is not None:
                progress(len(result.files))
    else:
        results = _run_pool(out_dir, patients, seed, workers, progress)
    results.sort(key=lambda result: result.index)

    files: list[WrittenFile] = [record for result in results for record in result.files]
    manifest = out_dir / MANIFEST_NAME
    write_manifest(manifest, seed, [result.summary for result in results], files)
    assert len(files) == count_files(patients), "the plan and the generator disagree on the file count"
    return SynthSummary(
        out_dir=out_dir,
        patients=patients,
        studies=len({record.study_instance_uid for record in files}),
        series=len({record.series_instance_uid for record in files}),
        files=len(files),
        bytes=sum(record.bytes for record in files),
        manifest=manifest,
    )
