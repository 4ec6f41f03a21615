"""Benchmark: synthetic cohort generation against plain pydicom writing, measured in the same run.

Generates a cohort of about ``--files`` files in a temporary folder with ``generate_cohort`` (all
cores), then measures the floor: one process writing the same number of already-built small
datasets with pydicom's ``dcmwrite``. Prints files/s, MB/s and the ratio; asserts nothing.

    python benchmarks/synth.py --files 10000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from connector.synth import count_files, generate_cohort
from connector.synth.plan import files_per_patient


def _floor_dataset(index: int) -> Dataset:
    """A small CT-like dataset: the kind of object generate_cohort writes, built in advance."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(index)])
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Floor^Patient"
    ds.PatientID = f"FLOOR{index}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series"])
    ds.Modality = "CT"
    ds.InstanceNumber = index + 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.add_new(0x7FE00010, "OW", np.full((64, 64), index % 4096, dtype=np.uint16).tobytes())
    return ds


def measure_floor(files: int, out_dir: Path) -> tuple[float, int]:
    """Seconds and bytes for one process to dcmwrite ``files`` prepared datasets."""
    datasets = [_floor_dataset(index) for index in range(files)]
    out_dir.mkdir()
    started = time.perf_counter()
    for index, ds in enumerate(datasets):
        dcmwrite(out_dir / f"{index:06d}.dcm", ds, enforce_file_format=True)
    elapsed = time.perf_counter() - started
    return elapsed, sum(p.stat().st_size for p in out_dir.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000, help="about how many files to generate")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    patients = max(1, round(args.files / files_per_patient(0)))

    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        started = time.perf_counter()
        summary = generate_cohort(Path(tmp) / "cohort", patients, seed=args.seed, workers=args.workers)
        elapsed = time.perf_counter() - started
        assert summary.files == count_files(patients)
        floor_elapsed, floor_bytes = measure_floor(summary.files, Path(tmp) / "floor")

    rate, floor_rate = summary.files / elapsed, summary.files / floor_elapsed
    print(f"cores: {os.cpu_count()}, workers: {args.workers or os.cpu_count()}")
    print(
        f"generate_cohort: {summary.files} files ({patients} patients), {summary.bytes / 1e6:.1f} MB "
        f"in {elapsed:.1f} s = {rate:.0f} files/s, {summary.bytes / 1e6 / elapsed:.1f} MB/s "
        f"(PHI planted, manifest written)"
    )
    print(
        f"floor (one process, dcmwrite of prebuilt small datasets): {summary.files} files, "
        f"{floor_bytes / 1e6:.1f} MB in {floor_elapsed:.1f} s = {floor_rate:.0f} files/s, "
        f"{floor_bytes / 1e6 / floor_elapsed:.1f} MB/s"
    )
    print(f"ratio generate_cohort / floor: {rate / floor_rate:.2f} (files/s)")


if __name__ == "__main__":
    main()
