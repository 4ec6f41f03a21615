"""The synthetic identified cohort: every planned kind exists, PHI sits where the manifest says,
references and geometry hold, output is reproducible and every kind is valid DICOM (dciodvfy)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from connector.synth import MANIFEST_NAME, count_files, generate_cohort, resolve
from connector.synth import patient as patient_module
from connector.synth.manifest import load_manifest
from connector.synth.writer import encode

PATIENTS = 2  # patient 0 gets a CR chest study, patient 1 a DX one
SEED = 7

EXPECTED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.1": "CR",
    "1.2.840.10008.5.1.4.1.1.1.1": "DX",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.7": "OT",
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",
}
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cohort")
    reported: list[int] = []
    summary = generate_cohort(out, PATIENTS, seed=SEED, workers=2, progress=reported.append)
    manifest = load_manifest(summary.manifest)
    datasets = {entry["path"]: pydicom.dcmread(out / entry["path"]) for entry in manifest["files"]}
    return {"out": out, "summary": summary, "manifest": manifest, "datasets": datasets, "reported": reported}


def _files_of(cohort: dict[str, Any], sop_class: str) -> list[dict[str, Any]]:
    return [entry for entry in cohort["manifest"]["files"] if entry["sop_class_uid"] == sop_class]


def test_count_files_matches_what_is_written(cohort: dict[str, Any]) -> None:
    on_disk = sorted(p.relative_to(cohort["out"]).as_posix() for p in cohort["out"].rglob("*.dcm"))
    assert cohort["summary"].files == count_files(PATIENTS) == len(on_disk) == 60
    assert on_disk == [entry["path"] for entry in cohort["manifest"]["files"]]
    assert sum(cohort["reported"]) == cohort["summary"].files
    assert cohort["summary"].bytes == sum((cohort["out"] / path).stat().st_size for path in on_disk)
    assert count_files(0) == 0 and count_files(7) == 7 * 30
    # Layout: patient / study / series / instance.
    assert all(len(Path(path).parts) == 4 for path in on_disk)
    assert not list(cohort["out"].rglob("*.tmp"))


def test_every_planned_modality_and_sop_class_is_present(cohort: dict[str, Any]) -> None:
    found = {(entry["sop_class_uid"], entry["modality"]) for entry in cohort["manifest"]["files"]}
    assert found == set(EXPECTED_SOP_CLASSES.items())
    for path, ds in cohort["datasets"].items():
        assert ds.SOPClassUID in EXPECTED_SOP_CLASSES, path
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.ImplementationClassUID.startswith("2.25.")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid


def test_every_planted_value_is_in_its_place(cohort: dict[str, Any]) -> None:
    places: set[str] = set()
    for entry in cohort["manifest"]["files"]:
        ds = cohort["datasets"][entry["path"]]
        assert entry["sop_instance_uid"] == ds.SOPInstanceUID
        assert entry["series_instance_uid"] == ds.SeriesInstanceUID
        for planted in entry["phi"]:
            if planted["where"] == "pixels":
                continue
            assert planted["value"] in resolve(ds, planted["where"]), (entry["path"], planted)
            places.add(planted["where"])
    # PHI is planted in nested, private and private-nested places, not only at the top level.
    for where in (
        "PatientName",
        "PatientBirthDate",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "OtherPatientNames",
        "EthnicGroup",
        "PatientComments",
        "AdditionalPatientHistory",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "InstitutionalDepartmentName",
        "DeviceSerialNumber",
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "AcquisitionDateTime",
        "InstanceCreationDate",
        "OtherPatientIDsSequence[0].PatientID",
        "ReferencedPatientSequence[0].ReferencedSOPInstanceUID",
        "RequestAttributesSequence[0].RequestedProcedureID",
        "RequestAttributesSequence[0].ScheduledProcedureStepID",
        "(0009,1001)",
        "(0009,1002)",
        "(0009,1010)[0].(0009,1001)",
        "(0009,1010)[0].PatientName",
        "ContentSequence[1].TextValue",
        "ContentSequence[2].ContentSequence[0].TextValue",
        "VerifyingObserverSequence[0].VerifyingObserverName",
    ):
        assert where in places, where


def test_private_block_and_free_text_name_the_patient(cohort: dict[str, Any]) -> None:
    for patient in cohort["manifest"]["patients"]:
        family = patient["name"].split("^")[0]
        files = [e for e in cohort["manifest"]["files"] if e["patient"] == patient["dir"]]
        for entry in files:
            ds = cohort["datasets"][entry["path"]]
            assert str(ds.PatientName) == patient["name"]
            block = ds.private_block(0x0009, "SYNTH HOSPITAL PACS")
            assert family in block[0x01].value
            assert block[0x02].value == patient["patient_id"]
            assert block[0x10].VR == "SQ" and family in block[0x10].value[0][0x00091001].value
            assert family in ds.AdditionalPatientHistory
        sr = next(cohort["datasets"][e["path"]] for e in files if e["sop_class_uid"] == SR_CLASS)
        texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
        assert any(family in text and patient["patient_id"] in text for text in texts)


def test_burned_in_text_is_drawn_where_the_manifest_says(cohort: dict[str, Any]) -> None:
    for sop_class, minimum_lines in ((SC_CLASS, 3), (US_CLASS, 2)):
        for entry in _files_of(cohort, sop_class):
            ds = cohort["datasets"][entry["path"]]
            assert ds.BurnedInAnnotation == "YES"
            burned = [p for p in entry["phi"] if p["where"] == "pixels"]
            assert len(burned) >= minimum_lines
            family = str(ds.PatientName).split("^")[0]
            assert any(family in p["value"] for p in burned)
            assert any(str(ds.PatientID) in p["value"] for p in burned)
            pixels = ds.pixel_array
            for planted in burned:
                left, top, right, bottom = planted["bbox"]
                assert 0 <= left < right <= ds.Columns and 0 <= top < bottom <= ds.Rows
                # Antialiased white text on a dark background: many bright pixels in each box.
                assert (pixels[top:bottom, left:right] > 150).sum() >= 10, planted
            if sop_class == SC_CLASS:
                # Between the last line and the captured image the screen is plain background.
                lowest = max(p["bbox"][3] for p in burned)
                assert (pixels[lowest + 2 : lowest + 4, :] > 150).sum() == 0


def test_report_references_images_of_its_own_study(cohort: dict[str, Any]) -> None:
    by_study: dict[str, dict[str, str]] = defaultdict(dict)
    for entry in cohort["manifest"]["files"]:
        by_study[entry["study_instance_uid"]][entry["sop_instance_uid"]] = entry["sop_class_uid"]
    reports = _files_of(cohort, SR_CLASS)
    assert len(reports) == PATIENTS
    for entry in reports:
        ds = cohort["datasets"][entry["path"]]
        study = by_study[ds.StudyInstanceUID]
        findings = next(item for item in ds.ContentSequence if item.ValueType == "CONTAINER")
        images = [item for item in findings.ContentSequence if item.ValueType == "IMAGE"]
        assert len(images) >= 2
        cited = set()
        for item in images:
            reference = item.ReferencedSOPSequence[0]
            assert study[reference.ReferencedSOPInstanceUID] == reference.ReferencedSOPClassUID
            cited.add(reference.ReferencedSOPInstanceUID)
        evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == ds.StudyInstanceUID
        listed = {
            ref.ReferencedSOPInstanceUID
            for series in evidence.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence
        }
        assert listed == cited


def _series(cohort: dict[str, Any], modality: str) -> list[list[pydicom.Dataset]]:
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for ds in cohort["datasets"].values():
        if ds.Modality == modality:
            groups[ds.SeriesInstanceUID].append(ds)
    return [sorted(group, key=lambda ds: int(ds.InstanceNumber)) for group in groups.values()]


@pytest.mark.parametrize(
    ("modality", "slices", "step_keyword"), [("CT", 12, "SliceThickness"), ("MR", 8, "SpacingBetweenSlices")]
)
def test_volume_geometry_is_consistent(
    cohort: dict[str, Any], modality: str, slices: int, step_keyword: str
) -> None:
    volumes = _series(cohort, modality)
    assert len(volumes) == PATIENTS
    for volume in volumes:
        assert len(volume) == slices
        first = volume[0]
        orientation = np.array(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        step = float(first.get(step_keyword))
        positions = np.array([ds.ImagePositionPatient for ds in volume], dtype=float)
        for ds in volume:
            assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
            assert list(ds.ImageOrientationPatient) == list(first.ImageOrientationPatient)
            assert list(ds.PixelSpacing) == list(first.PixelSpacing)
            assert (ds.Rows, ds.Columns) == (64, 64)
        steps = np.diff(positions, axis=0)
        # Every step is along the slice normal and exactly one slice spacing long.
        assert np.allclose(np.abs(steps @ normal), step)
        assert np.allclose(np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1), 0)
        assert len({round(float(s), 3) for s in steps @ normal}) == 1


def test_ct_values_are_plausible_hounsfield_units(cohort: dict[str, Any]) -> None:
    for volume in _series(cohort, "CT"):
        ds = volume[len(volume) // 2]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert ds.RescaleType == "HU"
        assert -1100 < hu[0, 0] < -900  # air outside the body
        assert (hu < -700).sum() > 200 and (hu > 500).sum() > 5  # lungs and bone
        assert -50 < np.median(hu[20:44, 28:36]) < 100  # mediastinal soft tissue


def _run_generator(out: Path, seed: int, hash_seed: str) -> None:
    # A fresh interpreter with a different string-hash seed: catches set-order nondeterminism.
    code = (
        "import sys; from pathlib import Path; from connector.synth import generate_cohort; "
        "generate_cohort(Path(sys.argv[1]), 3, seed=int(sys.argv[2]), workers=1)"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-c", code, str(out), str(seed)], check=True, env=env, timeout=120)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    # Seed 15's first patient is from it_IT, whose Faker city list once depended on the hash seed.
    _run_generator(tmp_path / "a", 15, "1")
    _run_generator(tmp_path / "b", 15, "2")
    generate_cohort(tmp_path / "c", 3, seed=15, workers=2)
    generate_cohort(tmp_path / "d", 3, seed=16, workers=1)
    a, b, c, d = (_tree(tmp_path / name) for name in "abcd")
    assert a == b == c
    assert a.keys() == d.keys()
    differing = [path for path in a if a[path] != d[path]]
    assert len(differing) == len(a)


def test_fast_encoder_gives_exactly_the_bytes_of_dcmwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = generate_cohort(tmp_path / "fast", PATIENTS, seed=SEED, workers=1)

    class Reference:
        def __init__(self, base: pydicom.Dataset) -> None:
            pass

        def encode(self, ds: pydicom.Dataset) -> bytes:
            return encode(ds)

    monkeypatch.setattr(patient_module, "SeriesEncoder", Reference)
    reference = generate_cohort(tmp_path / "reference", PATIENTS, seed=SEED, workers=1)
    assert _tree(fast.out_dir) == _tree(reference.out_dir)


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed"
)
def test_every_kind_of_file_passes_dciodvfy(cohort: dict[str, Any]) -> None:
    one_per_kind: dict[tuple[str, int], str] = {}
    for entry in cohort["manifest"]["files"]:
        ds = cohort["datasets"][entry["path"]]
        one_per_kind.setdefault((entry["sop_class_uid"], int(ds.SeriesNumber)), entry["path"])
    assert {kind for kind, _ in one_per_kind} == set(EXPECTED_SOP_CLASSES)
    for path in one_per_kind.values():
        result = subprocess.run(
            ["dciodvfy", str(cohort["out"] / path)], capture_output=True, text=True, timeout=60
        )
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, (path, errors)
        warnings = [line for line in lines if line.startswith("Warning")]
        assert len(warnings) <= 8, (path, warnings)


def test_manifest_is_at_the_root_and_lists_patient_tokens(cohort: dict[str, Any]) -> None:
    assert cohort["summary"].manifest == cohort["out"] / MANIFEST_NAME
    assert cohort["manifest"]["seed"] == SEED
    patients = cohort["manifest"]["patients"]
    assert [p["dir"] for p in patients] == ["patient-00001", "patient-00002"]
    for patient in patients:
        assert patient["patient_id"] in patient["tokens"]
        assert patient["name"].split("^")[0] in patient["tokens"]


def test_bad_patient_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="patients"):
        generate_cohort(tmp_path, 0)
