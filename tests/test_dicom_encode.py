"""The fast encoder writes exactly what pydicom's own writer writes, for every kind of dataset."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from connector.deid.keys import DatasetKeys
from connector.deid.markers import add_markers
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.recipes import compile_recipes
from connector.deid.transform import apply_plan, clean_deferred, new_work
from connector.dicom_encode import encode_file
from connector.dicom_meta import file_meta_for
from connector.synth import generate_cohort


def _reference(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _consistent(ds: pydicom.Dataset) -> pydicom.Dataset:
    """File meta that agrees with the dataset, as the connector always writes it."""
    ds.file_meta = file_meta_for(ds, ds.file_meta.TransferSyntaxUID, "2.25.1", "TEST")
    return ds


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 1, seed=3)
    return sorted(folder.rglob("*.dcm"))


def test_untouched_files_encode_identically(cohort: list[Path]) -> None:
    bundled = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
    checked = 0
    for path in [*cohort, *bundled]:
        try:
            first, second = _consistent(dcmread(path)), _consistent(dcmread(path))
            expected = _reference(second)
        except Exception:  # noqa: S112  (files pydicom itself cannot read or rewrite are no reference)
            continue
        assert encode_file(first) == expected, path.name
        checked += 1
    assert checked > 60


def test_deidentified_datasets_encode_identically(cohort: list[Path]) -> None:
    plan = compile_recipes(DEFAULT_OPTIONS)
    for path in cohort:
        datasets = []
        for _ in range(2):
            ds = dcmread(path)
            work = new_work(ds, plan, DatasetKeys(b"e" * 32))
            apply_plan(ds, work)
            clean_deferred(work)
            add_markers(ds, plan)
            ds.file_meta = file_meta_for(ds, ds.file_meta.TransferSyntaxUID, "2.25.1", "TEST")
            datasets.append(ds)
        assert encode_file(datasets[0]) == _reference(datasets[1]), path.name
