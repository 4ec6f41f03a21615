"""The recipes against DICOM PS3.15 Table E.1-1, and every action and option on real instances."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from connector.deid.engine import Refused, deidentify
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS, OPTIONS
from connector.deid.plan import Op
from connector.deid.recipes import compile_recipes
from tests.conftest import conformance_file
from tests.deid_helpers import PATIENT_ID, PATIENT_NAME, ct_instance

# DICOM PS3.15 Table E.1-1 as JSON: the tests that compare against it skip when it is absent.
TABLE_FILE = "dicom/confidentiality_profile_attributes.json"
KEYS = DatasetKeys(b"k" * 32)

# Annex E code -> the operation our recipes must compile it to (choices keep the attribute present).
BASIC_CODES = {
    "X": {Op.REMOVE},
    "Z": {Op.BLANK},
    "D": {Op.DUMMY},
    "U": {Op.UID},
    "K": {Op.KEEP},
    "C": {Op.CLEAN},
    "X/Z": {Op.BLANK},
    "X/D": {Op.DUMMY},
    "Z/D": {Op.DUMMY},
    "X/Z/D": {Op.DUMMY},
    "X/Z/U*": {Op.RECURSE},
}
OPTION_COLUMNS = {
    "rtnLongFullDatesOpt": "retain-longitudinal-full-dates",
    "rtnLongModifDatesOpt": "retain-longitudinal-modified-dates",
    "rtnPatCharsOpt": "retain-patient-characteristics",
    "rtnDevIdOpt": "retain-device-identity",
    "rtnInstIdOpt": "retain-institution-identity",
    "rtnUIDsOpt": "retain-uids",
    "cleanDescOpt": "clean-descriptors",
    "cleanStructContOpt": "clean-structured-content",
    "cleanGraphOpt": "clean-graphics",
}


def _rows() -> list[dict]:
    return json.loads(conformance_file(TABLE_FILE).read_text())


def _probe_tag(row: dict) -> int | None:
    ident = row["id"]
    if "where" in ident:
        return None  # the private-attributes row
    return int(ident.replace("x", "1"), 16)  # a member of a repeating group stands for the group


def test_basic_profile_covers_every_row_of_table_e1_1() -> None:
    plan = compile_recipes(())
    rows = _rows()
    assert len(rows) == 621
    for row in rows:
        tag = _probe_tag(row)
        if tag is None:
            continue
        expected = (
            {Op.PSEUDONYM} if row["id"] in {"00100010", "00100020"} else BASIC_CODES[row["basicProfile"]]
        )
        assert plan.op_for(tag) in expected, (row["tag"], row["name"], row["basicProfile"], plan.op_for(tag))
        if "x" not in row["id"]:
            assert plan.sources[tag] == "basic_profile.deid", row["name"]


@pytest.mark.parametrize(("column", "option"), list(OPTION_COLUMNS.items()))
def test_each_option_recipe_implements_its_column(column: str, option: str) -> None:
    plan = compile_recipes((option,))
    for row in _rows():
        if column not in row or (tag := _probe_tag(row)) is None:
            continue
        op = plan.op_for(tag)
        if option == "retain-longitudinal-modified-dates":
            assert op is Op.SHIFT_DATE, row["name"]
        elif row["id"] == "00101010":  # Patient's Age: retained but capped at 90Y
            assert op is Op.CLEAN
        elif row[column] == "K":
            assert op is Op.KEEP, (row["name"], op)
        else:
            assert op in {Op.CLEAN, Op.REMOVE}, (row["name"], op)


def test_every_option_has_a_recipe_and_a_cid_7050_code() -> None:
    assert len(OPTIONS) == 11
    for option in OPTIONS.values():
        assert option.code.startswith("1131")
        assert option.name in compile_recipes((option.name,)).options


def _deidentify(tmp_path: Path, options: tuple[str, ...] = (), **overrides: object):  # type: ignore[no-untyped-def]
    original = ct_instance(tmp_path / "in.dcm", **overrides)
    result = deidentify(tmp_path / "in.dcm", compile_recipes(options), KEYS)
    out = tmp_path / "out.dcm"
    out.write_bytes(result.encoded)
    return original, dcmread(out), result


def test_basic_profile_actions_on_an_instance(tmp_path: Path) -> None:
    original, ds, result = _deidentify(tmp_path)
    # X: removed
    for keyword in (
        "PatientAddress",
        "OtherPatientIDsSequence",
        "ImageComments",
        "StudyDescription",
        "PatientAge",
    ):
        assert keyword not in ds, keyword
    # Z: present and empty
    for keyword in ("StudyDate", "AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate"):
        assert keyword in ds and not ds[keyword].value, keyword
    # D: a dummy value
    assert ds.InstitutionName == "ANONYMIZED"
    assert ds.DeviceSerialNumber == "ANONYMIZED"
    # U: remapped into 2.25, consistently
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert ds[keyword].value.startswith("2.25.") and ds[keyword].value != original[keyword].value
        assert ds[keyword].value == KEYS.uid(original[keyword].value)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    # Pseudonyms
    assert str(ds.PatientName) == ds.PatientID == result.pseudonym
    assert ds.PatientID.startswith("PSN-") and PATIENT_ID not in ds.PatientID
    # Allow-list: a standard attribute on no list is removed; safe ones stay
    assert "ContentQualification" not in ds
    assert (ds.BodyPartExamined, ds.ConvolutionKernel, ds.KVP) == ("CHEST", "STANDARD", 120)
    assert ds.PixelData == original.PixelData
    # Private tags removed
    assert not [element for element in ds if element.tag.is_private]
    # Markers
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == ["113100"]


def test_no_original_value_survives_anywhere_in_the_bytes(tmp_path: Path) -> None:
    _, _, result = _deidentify(tmp_path)
    for value in (
        PATIENT_NAME,
        "Kowalska",
        "Zofia",
        PATIENT_ID,
        "OLD-4471",
        "19880112",
        "20240305",
        "ACC7781234",
        "Nowak",
        "Szpital Kliniczny",
        "SN-55512",
        "1.2.826.0.1.3680043.8.498.1111",
        "Długa",
    ):
        assert value.encode() not in result.encoded, value


def test_clean_descriptors_keeps_text_without_identifiers(tmp_path: Path) -> None:
    _, ds, _ = _deidentify(tmp_path, ("clean-descriptors",))
    assert ds.StudyDescription == "CT Thorax ***"
    assert "Kowalska" not in ds.ImageComments and "123 45 67" not in ds.ImageComments
    assert ds.ImageComments.startswith("Patient ")


def test_modified_dates_shift_by_the_patient_offset(tmp_path: Path) -> None:
    _, ds, _ = _deidentify(tmp_path, ("retain-longitudinal-modified-dates",))
    from datetime import date, timedelta

    offset = KEYS.date_offset_days(f"|{PATIENT_ID}")
    assert ds.StudyDate == (date(2024, 3, 5) - timedelta(days=offset)).strftime("%Y%m%d")
    assert ds.PatientBirthDate == ""  # no longitudinal option retains the birth date (Table E.1-1)
    assert ds.StudyTime == "101500"
    assert ds.LongitudinalTemporalInformationModified == "MODIFIED"


def test_full_dates_option_keeps_dates(tmp_path: Path) -> None:
    _, ds, _ = _deidentify(tmp_path, ("retain-longitudinal-full-dates",))
    assert (ds.StudyDate, ds.PatientBirthDate) == ("20240305", "")
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"


@pytest.mark.parametrize(
    ("age", "expected"),
    [("036Y", "036Y"), ("089Y", "089Y"), ("090Y", "090Y"), ("104Y", "090Y"), ("011M", "011M")],
)
def test_patient_characteristics_retained_and_age_capped(tmp_path: Path, age: str, expected: str) -> None:
    _, ds, _ = _deidentify(tmp_path, ("retain-patient-characteristics",), PatientAge=age)
    assert (ds.PatientSex, ds.PatientAge) == ("F", expected)


def test_retain_options_keep_what_they_name(tmp_path: Path) -> None:
    original, ds, _ = _deidentify(
        tmp_path, ("retain-uids", "retain-device-identity", "retain-institution-identity")
    )
    assert ds.StudyInstanceUID == original.StudyInstanceUID
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.DeviceSerialNumber == "SN-55512" and ds.StationName == "CT-WAW-3"
    assert ds.InstitutionName == "Szpital Kliniczny Warszawa"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113110", "113109", "113112"}


def test_retain_safe_private_keeps_only_listed_private_attributes(tmp_path: Path) -> None:
    path = tmp_path / "in.dcm"
    ds = ct_instance(path)
    safe = ds.private_block(0x0011, "SYNTH SAFE PARAMS", create=True)
    safe.add_new(0x10, "DS", "3.5")
    safe.add_new(0x11, "LO", PATIENT_NAME)  # same creator, not listed
    ds.save_as(path, enforce_file_format=True)
    kept = dcmread(
        _bytes_file(tmp_path, deidentify(path, compile_recipes(("retain-safe-private",)), KEYS).encoded)
    )
    private = {int(element.tag) for element in kept if element.tag.is_private}
    assert private == {0x00110010, 0x00111010}  # the creator and the one listed element
    assert kept[0x0011, 0x1010].value == 3.5
    assert (0x0011, 0x1011) not in kept and (0x0009, 0x1010) not in kept
    removed = dcmread(_bytes_file(tmp_path, deidentify(path, compile_recipes(()), KEYS).encoded))
    assert not [element for element in removed if element.tag.is_private]


def _bytes_file(folder: Path, data: bytes) -> Path:
    out = folder / f"out-{len(list(folder.iterdir()))}.dcm"
    out.write_bytes(data)
    return out


def test_keyword_lookup_for_every_compiled_tag() -> None:
    # Every tag a recipe names is a real DICOM attribute (no typo silently ignored).
    plan = compile_recipes(tuple(name for name in OPTIONS if name != "retain-longitudinal-full-dates"))
    assert all(keyword_for_tag(tag) for tag in plan.by_tag)
    assert plan.op_for(tag_for_keyword("PixelData")) is Op.KEEP


def test_a_planted_leak_is_caught_by_verification(tmp_path: Path) -> None:
    # The plan keeps Convolution Kernel (a safe attribute); a name smuggled into it must not pass.
    ct_instance(tmp_path / "in.dcm", ConvolutionKernel="Kowalska")
    with pytest.raises(Refused) as caught:
        deidentify(tmp_path / "in.dcm", compile_recipes(DEFAULT_OPTIONS), KEYS)
    assert caught.value.code == "leak"
    assert "PatientName" in str(caught.value)
    assert "Kowalska" not in str(caught.value)


def test_a_leak_inside_a_kept_sequence_is_caught(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue = "PL-88012345"  # the patient ID, planted as a code inside a kept sequence
    item.CodingSchemeDesignator = "99LOCAL"
    item.CodeMeaning = "procedure"
    ct_instance(tmp_path / "in.dcm", ProcedureCodeSequence=Sequence([item]))
    with pytest.raises(Refused, match="PatientID"):
        deidentify(tmp_path / "in.dcm", compile_recipes(()), KEYS)


def test_clean_graphics_keeps_annotations_and_cleans_their_text(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    text = Dataset()
    text.UnformattedTextValue = "Kowalska lesion"
    text.BoundingBoxAnnotationUnits = "PIXEL"
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER1"
    annotation.TextObjectSequence = Sequence([text])
    overrides = {"GraphicAnnotationSequence": Sequence([annotation])}
    path = tmp_path / "in.dcm"
    ds = ct_instance(path, **overrides)
    ds.add_new(0x60004000, "LT", "overlay of Zofia Kowalska")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 32)
    ds.save_as(path, enforce_file_format=True)
    plain = dcmread(_bytes_file(tmp_path, deidentify(path, compile_recipes(()), KEYS).encoded))
    assert (0x6000, 0x4000) not in plain and (0x6000, 0x3000) not in plain
    cleaned = dcmread(
        _bytes_file(tmp_path, deidentify(path, compile_recipes(("clean-graphics",)), KEYS).encoded)
    )
    assert cleaned[0x6000, 0x4000].value == "overlay of *** ***"  # given and family name
    assert (0x6000, 0x3000) not in cleaned  # an overlay bitmap may spell a name: it cannot be cleaned
    assert "GraphicAnnotationSequence" in cleaned


def test_the_free_form_preamble_is_never_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "in.dcm"
    ds = ct_instance(path)
    ds.preamble = b"II*\x00" + b"Kowalska Zofia PL-88012345".ljust(124, b"\x00")
    ds.save_as(path, enforce_file_format=True)
    assert dcmread(path).preamble.startswith(b"II*")
    result = deidentify(path, compile_recipes(()), KEYS)
    assert result.encoded[:128] == b"\x00" * 128
    assert b"Kowalska" not in result.encoded
