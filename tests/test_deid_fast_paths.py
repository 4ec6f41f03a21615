"""The fast paths of de-identification change nothing: pydicom's own paths give the same results.

connector.dicom_decode reads files and sequences itself where they are plain, peeks at values
without decoding elements in place, and transform.py reads removed sequences from their bytes
and cleans text from raw values. Each is held here to what pydicom (or the plain path) gives,
on the synthetic cohort and on pydicom's bundled test files.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from connector import dicom_meta
from connector.deid import engine, markers, pixels, transform
from connector.deid.engine import Refused, deidentify
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS, OPTIONS
from connector.deid.recipes import compile_recipes
from connector.dicom_decode import peek, read_file, sequence_value
from connector.synth import generate_cohort
from tests.deid_helpers import ct_instance

BUNDLED = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=5)
    return sorted(folder.rglob("*.dcm"))


def _state(ds: Dataset) -> dict[str, Any]:
    # A deflated file is read from a fresh buffer object each time.
    return {key: value for key, value in vars(ds).items() if key not in ("_dict", "file_meta", "buffer")}


def _same_dataset(ours: Dataset, theirs: Dataset, where: str) -> None:
    """The same attributes and the same elements, raw where pydicom's are raw, sequences recursively."""
    assert _state(ours) == _state(theirs), where
    assert list(ours._dict) == list(theirs._dict), where
    for tag, element in ours._dict.items():
        other = theirs._dict[tag]
        assert type(element) is type(other), (where, tag)
        if isinstance(element, RawDataElement):
            assert tuple(element) == tuple(other), (where, tag)
            if element.VR == "SQ":
                _same_sequence(sequence_value(ours, tag), theirs[tag].value, f"{where}/{tag}")
        elif element.VR == "SQ":
            _same_sequence(element.value, other.value, f"{where}/{tag}")
        else:
            assert element.VR == other.VR and element.value == other.value, (where, tag)


def _same_sequence(ours: Any, theirs: Any, where: str) -> None:
    assert type(ours) is type(theirs) and len(ours) == len(theirs), where
    assert vars(ours) == vars(theirs), where
    for index, (item, other) in enumerate(zip(ours, theirs, strict=True)):
        _same_dataset(item, other, f"{where}[{index}]")


def _read_both(path: Path) -> tuple[Any, Any]:
    """read_file's and dcmread's outcome: a dataset, or the type of what was raised."""
    outcomes = []
    for reader in (read_file, dcmread):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outcomes.append(reader(path))
            except Exception as exc:  # the same failure is the expected outcome for a bad file
                outcomes.append(type(exc))
    return outcomes[0], outcomes[1]


def test_read_file_reads_what_dcmread_reads(cohort: list[Path], tmp_path: Path) -> None:
    ct = ct_instance(tmp_path / "ct.dcm")
    whole = (tmp_path / "ct.dcm").read_bytes()
    bad = {
        "truncated.dcm": whole[: len(whole) - 100],
        "cut-in-header.dcm": whole[:700],
        "no-prefix.dcm": b"\x00" * 128 + b"NOPE" + whole[132:],
        "meta-only.dcm": whole[: 132 + 12 + int.from_bytes(whole[140:144], "little")],
        "empty.dcm": b"",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    assert ct.PatientName
    paths = [*cohort, *BUNDLED, *(tmp_path / name for name in ["ct.dcm", *bad])]
    for path in paths:
        ours, theirs = _read_both(path)
        if isinstance(theirs, type):
            assert ours is theirs, path.name
            continue
        assert isinstance(ours, Dataset), path.name
        _same_dataset(ours, theirs, path.name)
        _same_dataset(ours.file_meta, theirs.file_meta, f"{path.name}:meta")
        assert ours.preamble == theirs.preamble


def test_sequences_decode_as_pydicom_decodes_them(cohort: list[Path]) -> None:
    decoded = 0
    for path in [*cohort, *BUNDLED]:
        try:
            ours, theirs = dcmread(path), dcmread(path)
        except Exception:  # noqa: S112  (files pydicom cannot read are no reference)
            continue
        for tag in list(ours._dict):
            if ours._dict[tag].VR == "SQ":
                _same_sequence(sequence_value(ours, tag), theirs[tag].value, f"{path.name}/{tag}")
                decoded += 1
        _same_dataset(ours, theirs, path.name)
    assert decoded > 100


def test_peek_decodes_without_changing_the_element(cohort: list[Path]) -> None:
    ds, reference = dcmread(cohort[0]), dcmread(cohort[0])
    for keyword in ("PatientName", "Rows", "ImageType", "SOPInstanceUID", "Modality"):
        tag = reference.data_element(keyword).tag  # type: ignore[union-attr]
        assert isinstance(ds._dict[tag], RawDataElement)
        assert peek(ds, tag) == reference[tag].value
        assert isinstance(ds._dict[tag], RawDataElement), "peek decoded the element in place"
    assert peek(ds, 0x00091234, "absent") == "absent"


def _plain_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fast path off: pydicom reads, decodes in place, and no raw value is cleaned."""

    def decoded_in_place(ds: Dataset, tag: int, default: Any = None) -> Any:
        return ds[tag].value if tag in ds._dict else default

    def decoded_sequence(ds: Dataset, tag: int) -> Any:
        return ds[tag].value

    monkeypatch.setattr(engine, "read_file", dcmread)
    for module in (engine, transform, pixels, dicom_meta):
        monkeypatch.setattr(module, "peek", decoded_in_place)
    monkeypatch.setattr(markers, "writes_ascii_as_is", lambda ds: False)
    monkeypatch.setattr(transform, "sequence_value", decoded_sequence)
    monkeypatch.setattr(transform, "raw_items", lambda ds, tag: None)
    monkeypatch.setattr(transform, "_clean_raw", lambda *args: False)
    monkeypatch.setattr(transform, "_set_text", lambda ds, tag, vr, value: setattr(ds[tag], "value", value))


def _outcomes(paths: list[Path], options: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Per file: the output's digest, name and actions, and what verification was given to check."""
    plan, keys = compile_recipes(options), DatasetKeys(b"f" * 32)
    checked: list[Any] = []
    find_leaks = engine.find_leaks

    def recorded(encoded: bytes, identifying: dict[bytes, str], kept: set[bytes], safe_raw: Any) -> Any:
        # Safe raw values are compared without their padding: peeked ones keep it, decoded ones not.
        checked.append(
            (sorted(identifying.items()), sorted(kept), sorted({v.rstrip(b" \x00") for v in safe_raw}))
        )
        return find_leaks(encoded, identifying, kept, safe_raw)

    monkeypatch.setattr(engine, "find_leaks", recorded)
    found: dict[str, Any] = {}
    for path in paths:
        checked.clear()
        name = f"{path.parent.name}/{path.name}"
        try:
            result = deidentify(path, plan, keys)
        except Refused as exc:
            found[name] = ("refused", exc.code, str(exc), checked[:])
            continue
        digest = hashlib.sha256(result.encoded).hexdigest()
        found[name] = (digest, result.relative_path, sorted(result.actions.items()), checked[:])
    return found


@pytest.mark.parametrize(
    "options",
    [DEFAULT_OPTIONS, (), tuple(name for name in OPTIONS if name != "retain-longitudinal-full-dates")],
    ids=["default", "basic", "all-options"],
)
def test_fast_paths_give_the_bytes_of_the_plain_paths(
    cohort: list[Path], monkeypatch: pytest.MonkeyPatch, options: tuple[str, ...]
) -> None:
    paths = [*cohort, *BUNDLED]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with monkeypatch.context() as recording:
            fast = _outcomes(paths, options, recording)
        with monkeypatch.context() as patched:
            _plain_paths(patched)
            plain = _outcomes(paths, options, patched)
    assert fast == plain
    assert sum(1 for outcome in fast.values() if outcome[0] != "refused") > 40
