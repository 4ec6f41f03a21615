"""De-identifying whole folders as a data steward does: cohorts, consistency, pixels, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import dcmread, dcmwrite
from typer.testing import CliRunner

from connector.cli import app
from connector.deid import batch
from connector.deid.batch import INCOMING, REPORT_NAME, Outcome, RunSummary, run_batch
from connector.deid.engine import Deidentified, Refused
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.recipes import RecipeError, compile_recipes
from connector.synth import generate_cohort
from tests.deid_helpers import PATIENT_NAME, ct_instance

SECRET = DatasetKeys(b"a" * 32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=11)
    return folder


def run(
    in_dir: Path,
    out_dir: Path,
    options: tuple[str, ...] = DEFAULT_OPTIONS,
    keys: DatasetKeys = SECRET,
    workers: int = 2,
) -> RunSummary:
    return run_batch(
        in_dir,
        out_dir,
        compile_recipes(options),
        keys,
        out_dir.parent / f"{out_dir.name}-q",
        "test",
        workers=workers,
    )


@pytest.fixture(scope="module")
def deidentified(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunSummary]:
    out = tmp_path_factory.mktemp("deid") / "out"
    return out, run(cohort, out)


def outputs(folder: Path) -> Iterator[Path]:
    return (path for path in sorted(folder.rglob("*.dcm")) if INCOMING not in path.parts)


def planted(cohort: Path) -> list[dict]:
    return json.loads((cohort / "synth-manifest.json").read_text())["files"]


def test_every_instance_is_written_and_the_manifest_is_skipped(cohort: Path, deidentified) -> None:  # type: ignore[no-untyped-def]
    out, summary = deidentified
    files = planted(cohort)
    assert summary.written == len(files)
    assert summary.quarantined == 0
    assert [item["reason_code"] for item in summary.report["skipped"]] == ["not_dicom"]
    assert len(list(outputs(out))) == len(files)


def test_no_planted_identifier_survives_in_any_output(cohort: Path, deidentified) -> None:  # type: ignore[no-untyped-def]
    out, _ = deidentified
    # Times and demographics are retained by the default options; pixels are checked separately.
    retained = {"time", "demographic", "pixels"}
    values = set()
    for item in planted(cohort):
        for phi in item["phi"]:
            if phi["kind"] in retained:
                continue
            values.add(phi["value"])
            if phi["kind"] == "name":
                values.update(part for part in phi["value"].replace("=", "^").split("^") if len(part) >= 4)
    values = {value for value in values if len(value) >= 4}
    assert len(values) > 50
    for path in outputs(out):
        data = path.read_bytes()
        header = data[: data.rfind(b"\xe0\x7f\x10\x00")]
        found = [value for value in values if value.encode() in header]
        assert not found, (path.name, found)


def test_pseudonyms_and_uids_are_consistent_within_a_study(deidentified) -> None:  # type: ignore[no-untyped-def]
    out, _ = deidentified
    by_study: dict[str, set[str]] = {}
    for path in outputs(out):
        ds = dcmread(path, stop_before_pixels=True)
        by_study.setdefault(ds.StudyInstanceUID, set()).add(ds.PatientID)
        assert str(ds.PatientName) == ds.PatientID
        assert path.relative_to(out).parts[:3] == (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert all(len(pseudonyms) == 1 for pseudonyms in by_study.values())
    assert len({next(iter(p)) for p in by_study.values()}) == 2  # two patients


def test_sr_references_point_to_written_instances(deidentified) -> None:  # type: ignore[no-untyped-def]
    out, _ = deidentified
    instances = {}
    reports = []
    for path in outputs(out):
        ds = dcmread(path, stop_before_pixels=True)
        instances[ds.SOPInstanceUID] = ds.StudyInstanceUID
        if ds.Modality == "SR":
            reports.append(ds)
    assert reports
    for report in reports:
        referenced = [
            item.ReferencedSOPInstanceUID
            for element in report.iterall()
            if element.keyword == "ReferencedSOPSequence"
            for item in element.value
        ]
        assert referenced
        for uid in referenced:
            assert instances.get(uid) == report.StudyInstanceUID
        texts = [element.value for element in report.iterall() if element.keyword == "TextValue"]
        # The tree and its text survive (Clean Structured Content); the names in the text do not.
        assert texts and any("***" in text for text in texts)


def test_same_secret_same_output_other_secret_unlinkable(cohort: Path, deidentified, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = deidentified
    again = tmp_path / "again"
    run(cohort, again, workers=1)
    first = {p.relative_to(out): p.read_bytes() for p in outputs(out)}
    second = {p.relative_to(again): p.read_bytes() for p in outputs(again)}
    assert first == second  # deterministic across runs and worker counts
    other = tmp_path / "other"
    run(cohort, other, keys=DatasetKeys(b"b" * 32))
    first_ids = {p.parts[0] for p in first}
    other_ids = {p.relative_to(other).parts[0] for p in outputs(other)}
    assert first_ids.isdisjoint(other_ids)
    first_uids = {p.parts[1] for p in first}
    assert first_uids.isdisjoint({p.relative_to(other).parts[1] for p in outputs(other)})


def test_burned_in_text_is_cleaned_by_rule(cohort: Path, deidentified) -> None:  # type: ignore[no-untyped-def]
    out, summary = deidentified
    assert sum(summary.report["pixel_rules_applied"].values()) >= 3
    boxes = {}
    for item in planted(cohort):
        for phi in item["phi"]:
            if phi["kind"] == "pixels":
                boxes.setdefault(item["sop_instance_uid"], []).append(phi["bbox"])
    cleaned = 0
    for path in outputs(out):
        ds = dcmread(path)
        if ds.Modality not in {"US", "OT"}:
            continue
        assert ds.BurnedInAnnotation == "NO"
        pixels = ds.pixel_array
        # The rules blank the whole banner band: no text pixel is left above the image area.
        band = pixels[:24, :] if ds.Modality == "US" else pixels[:60, :]
        assert np.all(band == band.min())
        cleaned += 1
    assert cleaned == len(boxes) > 0


def test_burned_in_text_is_quarantined_without_the_option(cohort: Path, tmp_path: Path) -> None:
    summary = run(cohort, tmp_path / "basic", options=())
    assert summary.reasons["burned_in_text"] >= 3
    assert not [
        p for p in outputs(tmp_path / "basic") if dcmread(p, stop_before_pixels=True).Modality in {"US", "OT"}
    ]
    quarantine = tmp_path / "basic-q"
    assert len(list(quarantine.rglob("*.bin"))) == summary.quarantined


def _dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {
        line.split(" - ", 1)[-1]
        for line in (result.stdout + result.stderr).splitlines()
        if line.startswith("Error")
    }


def test_outputs_stay_valid_dicom(cohort: Path, deidentified, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; `make test` installs it")
    out, _ = deidentified
    checked = set()
    for path in outputs(out):
        ds = dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID in checked:
            continue
        checked.add(ds.SOPClassUID)
        assert not _dciodvfy_errors(path), (ds.Modality, _dciodvfy_errors(path))
    assert len(checked) >= 7
    basic = tmp_path / "basic"
    run(cohort, basic, options=())
    for path in list(outputs(basic))[::7]:
        assert not _dciodvfy_errors(path), path.name


def test_report_has_counts_actions_and_no_phi(cohort: Path, deidentified) -> None:  # type: ignore[no-untyped-def]
    out, summary = deidentified
    text = (out / REPORT_NAME).read_text()
    report = json.loads(text)
    assert report["options"] == list(DEFAULT_OPTIONS)
    assert report["actions"]["PatientName"] == {"pseudonym": report["written"]}
    assert report["actions"]["PatientAddress"]["remove"] >= 1
    assert sum(study["instances"] for study in report["studies"]) == summary.written
    for item in planted(cohort):
        for phi in item["phi"]:
            if phi["kind"] not in {"time", "demographic"} and len(phi["value"]) >= 4:
                assert phi["value"] not in text, phi


def _bad_inputs(folder: Path) -> None:
    ct_instance(folder / "good" / "a.dcm")
    ct_instance(folder / "good" / "b.dcm")
    (folder / "notes.txt").write_text("not a dicom file")
    (folder / "empty.dcm").write_bytes(b"")
    whole = ct_instance(folder / "truncated.dcm")
    data = (folder / "truncated.dcm").read_bytes()
    (folder / "truncated.dcm").write_bytes(data[: len(data) - 60])
    ct_instance(folder / "header-cut.dcm")
    cut = (folder / "header-cut.dcm").read_bytes()
    (folder / "header-cut.dcm").write_bytes(cut[: len(cut) // 2])
    ct_instance(folder / "no-sop.dcm", SOPInstanceUID=None)
    ds = ct_instance(folder / "odd-syntax.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
    dcmwrite(folder / "odd-syntax.dcm", ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
    shutil.copy(folder / "good" / "a.dcm", folder / "duplicate-of-a.dcm")
    assert whole.PatientName == PATIENT_NAME


def test_bad_inputs_are_reported_and_the_batch_goes_on(tmp_path: Path) -> None:
    _bad_inputs(tmp_path / "in")
    summary = run(tmp_path / "in", tmp_path / "out")
    assert summary.written == 2
    reasons = sorted(item["reason_code"] for item in summary.report["quarantined"])
    assert reasons == ["missing_sop_instance_uid", "truncated", "truncated", "unsupported_transfer_syntax"]
    skipped = sorted(item["reason_code"] for item in summary.report["skipped"])
    assert skipped == ["duplicate_instance", "not_dicom", "not_dicom"]  # notes.txt, empty.dcm
    # Nothing half-written: only complete outputs and the report are left in OUT_DIR.
    left = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert left == sorted([REPORT_NAME, *[p.name for p in outputs(tmp_path / "out")]])
    assert not (tmp_path / "out" / INCOMING).exists()
    # Quarantined originals are copied byte for byte, outside OUT_DIR, with an index.
    index = [
        json.loads(line) for line in next((tmp_path / "out-q").rglob("index.jsonl")).read_text().splitlines()
    ]
    assert len(index) == summary.quarantined
    for entry in index:
        copy = next((tmp_path / "out-q").rglob(f"{entry['id']}.bin"))
        assert copy.read_bytes() == Path(entry["source"]).read_bytes()
    # Reasons in the report never quote the input's values or paths.
    report = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "Kowalska" not in report and "truncated.dcm" not in report


@pytest.mark.parametrize(
    "recipe",
    [
        "",
        "FORMAT dicom\n%header\nREMOVE NotAnAttribute\n",
        "FORMAT dicom\n%header\nJITTER StudyDate 3\n",
        "FORMAT dicom\n%header\nREPLACE PatientID func:unknown\n",
        "garbage\n",
    ],
)
def test_invalid_recipe_is_refused_before_anything_is_written(tmp_path: Path, recipe: str) -> None:
    bad = tmp_path / "site.deid"
    bad.write_text(recipe)
    with pytest.raises(RecipeError):
        compile_recipes((), extra=(bad,))
    with pytest.raises(RecipeError, match="does not exist"):
        compile_recipes((), extra=(tmp_path / "missing.deid",))


def test_pydicom_bundled_test_files(tmp_path: Path) -> None:
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    files = sorted(bundled.glob("*.dcm"))
    assert len(files) > 20
    source = tmp_path / "pydicom"
    source.mkdir()
    for path in files:
        shutil.copy(path, source / path.name)
    summary = run(source, tmp_path / "out")
    assert summary.written + summary.quarantined + summary.skipped == len(files)
    assert summary.written >= 10
    assert "internal_error" not in summary.reasons, summary.report["quarantined"]
    for path in outputs(tmp_path / "out"):
        ds = dcmread(path, stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES"
        assert not [element for element in ds if element.tag.is_private]


def test_cli_deid_runs_and_summarises(cohort: Path, tmp_path: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(
        app, ["deid", str(cohort), str(tmp_path / "out"), "--dataset", "lung-2026"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "de-identified" in result.output and "report:" in result.output
    assert (tmp_path / "data" / "keys" / "datasets" / "lung-2026.secret").stat().st_mode & 0o777 == 0o600
    bad = CliRunner().invoke(
        app, ["deid", str(cohort), str(tmp_path / "o2"), "-o", "retain-everything"], env=env
    )
    assert bad.exit_code == 2 and "unknown option" in bad.output
    missing = CliRunner().invoke(app, ["deid", str(tmp_path / "nope"), str(tmp_path / "o3")], env=env)
    assert missing.exit_code == 2


class _RecordingSink:
    """An in-place sink (like ingest's) that only records what the batch asks of it."""

    in_place = True

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.kept: list[str] = []
        self.dropped: list[str] = []
        self.finished = False

    def store(self, result: Deidentified) -> str:
        self.stored.append(result.relative_path)
        return result.relative_path

    def keep(self, outcome: Outcome) -> None:
        self.kept.append(outcome.receipt)

    def drop(self, outcome: Outcome) -> None:
        self.dropped.append(outcome.receipt)

    def finish(self) -> None:
        self.finished = True


def _same_instance_twice(folder: Path) -> None:
    ds = ct_instance(folder / "a.dcm")
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7777"  # another study: another output path
    ds.save_as(folder / "b.dcm", enforce_file_format=True)


@pytest.mark.parametrize("changed", [False, True])
def test_an_instance_claimed_by_a_later_input_is_stored_again_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed: bool
) -> None:
    _same_instance_twice(tmp_path / "in")
    real_claim, real_deidentify = batch._claim, batch.deidentify
    claims: list[str] = []
    calls: list[Path] = []

    def later_input_claims_first(sop_instance_uid: str) -> bool:
        claims.append(sop_instance_uid)
        return len(claims) > 1 and real_claim(sop_instance_uid)

    def deidentify(path: Path, plan: object, keys: DatasetKeys) -> Deidentified:
        calls.append(path)
        if changed and len(calls) == 3:  # the parent's second look at a.dcm
            raise Refused("truncated", "the file changed")
        return real_deidentify(path, plan, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(batch, "_claim", later_input_claims_first)
    monkeypatch.setattr(batch, "deidentify", deidentify)
    sink = _RecordingSink()
    summary = run_batch(
        tmp_path / "in",
        tmp_path / "out",
        compile_recipes(DEFAULT_OPTIONS),
        SECRET,
        tmp_path / "q",
        "t",
        1,
        sink=sink,
    )
    assert [path.name for path in calls] == ["a.dcm", "b.dcm", "a.dcm"]  # a.dcm again, after the others
    assert len(sink.stored) == (2 if not changed else 1) and sink.finished
    assert sink.dropped == [sink.stored[0]]  # b.dcm's output, stored first, then dropped
    assert summary.report["skipped"][0]["reason_code"] == "duplicate_instance"
    if changed:
        assert sink.kept == [] and summary.quarantined == 1
        assert summary.report["quarantined"][0]["reason_code"] == "changed_during_run"
    else:
        assert sink.kept == [sink.stored[1]] and summary.written == 1
        assert sink.kept[0] != sink.dropped[0]  # a.dcm's own output, not b.dcm's
