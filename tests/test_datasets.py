"""Encrypted datasets as a steward and a DPO use them: ingest, export, rotate, shred, tampering."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connector.cli import app
from connector.crypto.dataset_secrets import load_or_create_dataset_secret
from connector.crypto.keystore import KeyStoreError, MasterKeyError, WrappedKey, encode_master_key
from connector.datasets.export import export_dataset
from connector.datasets.ingest import DatasetConflict, age_band, ingest
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.shred import rotate_dataset_key, shred
from connector.datasets.vault import DatasetVault, ObjectIntegrityError
from connector.deid.batch import run_batch
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.recipes import compile_recipes
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.storage.objects import ObjectStoreError, Staged
from connector.synth import generate_cohort
from tests.store_runtimes import runtime_on

DATASET = "lung-screening"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=5)
    return folder


@pytest.fixture(params=["local", "s3"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    built = runtime_on(request, tmp_path, "ds")
    yield built
    built.close()


def stored_objects(runtime: Runtime) -> dict[str, bytes]:
    with runtime.sessions() as session:
        keys = list(session.execute(select(ObjectRecord.object_key)).scalars())
    return {key: runtime.objects.get(key) for key in keys}


def test_ingest_stores_only_ciphertext_and_indexes_the_cohort(runtime: Runtime, cohort: Path) -> None:
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    files = json.loads((cohort / "synth-manifest.json").read_text())["files"]
    assert summary.stored == len(files) and summary.deid.quarantined == 0
    objects = stored_objects(runtime)
    assert len(objects) == len(files)
    with runtime.sessions() as session:
        studies = list(session.execute(select(StudyRecord)).scalars())
    pseudonyms = {study.patient_pseudonym for study in studies}
    assert len(pseudonyms) == 2 and len(studies) == summary.studies == 10
    for key, data in objects.items():
        assert data.startswith(b"ICENC")
        assert b"DICM" not in data and b"ISO_IR" not in data and b"1.2.840.10008" not in data, key
        assert not any(pseudonym.encode() in data for pseudonym in pseudonyms)
    # The index holds coarse, de-identified cohort attributes.
    assert {study.sex for study in studies} <= {"M", "F"}
    assert all(study.age_band.endswith("9") or study.age_band == "90+" for study in studies)
    assert {"CT", "MR", "US", "SR"} <= {m for study in studies for m in study.modalities.split(",")}
    # The staging folder with de-identified plaintext is gone; the report (no PHI) is kept.
    assert not list((runtime.settings.data_dir / "staging").glob("*/**/*.dcm"))
    assert summary.deid.report_path.exists()


def test_export_gives_back_the_exact_deidentified_files(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    exported = tmp_path / "export"
    assert export_dataset(runtime, DATASET, exported) == len(stored_objects(runtime))
    secret = load_or_create_dataset_secret(runtime.settings.keys_dir, DATASET)
    reference = tmp_path / "reference"
    run_batch(
        cohort, reference, compile_recipes(DEFAULT_OPTIONS), DatasetKeys(secret), tmp_path / "q", DATASET
    )
    expected = {p.relative_to(reference): p.read_bytes() for p in reference.rglob("*.dcm")}
    got = {p.relative_to(exported): p.read_bytes() for p in exported.rglob("*.dcm")}
    assert got == expected


def test_resumed_ingest_has_no_duplicates_or_orphans(
    runtime: Runtime, cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_stage = runtime.objects.stage
    calls = itertools.count(1)  # thread-safe: ingest stores from several threads (and processes)

    def failing_stage(key: str, data: bytes) -> Staged:
        if next(calls) == 25:
            raise ObjectStoreError("simulated: the store went away")
        return original_stage(key, data)

    monkeypatch.setattr(runtime.objects, "stage", failing_stage)
    with pytest.raises(ObjectStoreError, match="simulated"):
        ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    indexed = len(stored_objects(runtime))  # every object stored before or beside the failure
    assert 0 < indexed < 60
    monkeypatch.setattr(runtime.objects, "stage", original_stage)
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    assert (summary.already_stored, summary.stored) == (indexed, 60 - indexed)
    objects = stored_objects(runtime)
    assert len(objects) == 60
    if runtime.settings.object_store == "local":
        on_disk = {
            str(p.relative_to(runtime.settings.effective_objects_dir))
            for p in runtime.settings.effective_objects_dir.rglob("*.enc")
        }
        assert on_disk == set(objects)  # no orphan object outside the index


def test_tampered_swapped_and_truncated_objects_are_named(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    objects = stored_objects(runtime)
    first, second = sorted(objects)[:2]
    cases = {
        "flipped": objects[first][:-20] + bytes([objects[first][-20] ^ 1]) + objects[first][-19:],
        "swapped": objects[second],
        "truncated": objects[first][: len(objects[first]) // 2],
        "extended": objects[first] + b"\x00" * 16,
    }
    for name, bad in cases.items():
        runtime.objects.put(first, bad)
        with pytest.raises(ObjectIntegrityError, match=first):
            export_dataset(runtime, DATASET, tmp_path / name)
        assert not [path for path in (tmp_path / name).rglob("*") if path.name.startswith(".")]
    runtime.objects.put(first, objects[first])
    export_dataset(runtime, DATASET, tmp_path / "restored")


def test_rotation_rewraps_without_reencrypting(runtime: Runtime, cohort: Path, tmp_path: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    before = stored_objects(runtime)
    with runtime.sessions() as session:
        old_wrapped = session.execute(select(StudyRecord.wrapped_key)).scalars().first()
    new_key = rotate_dataset_key(runtime, DATASET)
    assert new_key.endswith("/v2")
    assert stored_objects(runtime) == before  # not a byte re-encrypted
    export_dataset(runtime, DATASET, tmp_path / "after-rotation")
    with pytest.raises(KeyStoreError):
        runtime.keys.unwrap(DATASET, WrappedKey.from_dict(json.loads(old_wrapped)))  # the old KEK is retired


def test_shredding_a_patient_defeats_copies_of_bucket_and_database(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    bucket_copy = stored_objects(runtime)
    with runtime.sessions() as session:
        database_copy = {
            row.study_uid: (row.patient_pseudonym, row.wrapped_key)
            for row in session.execute(select(StudyRecord)).scalars()
        }
    victim = sorted({pseudonym for pseudonym, _ in database_copy.values()})[0]
    result = shred(runtime, DATASET, patient=victim)
    assert (result.studies, result.objects) == (5, 30)
    remaining = stored_objects(runtime)
    assert len(remaining) == 30
    shredded = {key for key in bucket_copy if key not in remaining}
    assert len(shredded) == 30
    for key in shredded:
        assert not runtime.objects.exists(key)
    # Even with the copies taken before, the shredded studies cannot be decrypted.
    vault = DatasetVault(DATASET, runtime.keys, runtime.sessions)
    for study_uid, (pseudonym, wrapped) in database_copy.items():
        if pseudonym != victim:
            continue
        with pytest.raises(KeyStoreError):
            runtime.keys.unwrap(DATASET, WrappedKey.from_dict(json.loads(wrapped)))
        key = next(k for k in shredded if f"/{study_uid}/" in k)
        with pytest.raises(ObjectIntegrityError, match="shredded"):
            vault.open(bucket_copy[key], study_uid, key)
    # The other patient is untouched.
    export_dataset(runtime, DATASET, tmp_path / "survivors")
    assert len(list((tmp_path / "survivors").rglob("*.dcm"))) == 30


def test_shredding_the_dataset_destroys_its_keys(runtime: Runtime, cohort: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    bucket_copy = stored_objects(runtime)
    shred(runtime, DATASET)
    assert not stored_objects(runtime)
    assert all(not runtime.objects.exists(key) for key in bucket_copy)
    status = {row.dataset: row for row in runtime.keys.status()}
    assert status[DATASET].destroyed
    assert not (runtime.settings.keys_dir / "datasets" / f"{DATASET}.secret").exists()


def test_a_dataset_keeps_its_settings(runtime: Runtime, cohort: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    with pytest.raises(DatasetConflict, match="options: dataset has"):
        ingest(runtime, cohort, DATASET, ("retain-uids",))


def test_wrong_master_key_is_refused_and_nothing_is_overwritten(tmp_path: Path, cohort: Path) -> None:
    good = encode_master_key(b"\x01" * 32)
    runtime = build_runtime(load_settings(data_dir=tmp_path, master_key=good))
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    runtime.close()
    sealed = tmp_path / "keys" / "keystore.sealed"
    before = sealed.read_bytes()
    with pytest.raises(MasterKeyError):  # at start: nothing runs with a wrong master key
        build_runtime(load_settings(data_dir=tmp_path, master_key=encode_master_key(b"\x02" * 32)))
    assert sealed.read_bytes() == before
    result = CliRunner().invoke(
        app,
        ["export", DATASET, str(tmp_path / "cli-out")],
        env={"CONNECTOR_DATA_DIR": str(tmp_path), "CONNECTOR_MASTER_KEY": encode_master_key(b"\x03" * 32)},
    )
    assert result.exit_code == 2 and "master key" in result.output.lower()


def test_cli_ingest_show_export_shred(tmp_path: Path, cohort: Path) -> None:
    env = {"CONNECTOR_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(cohort), "--dataset", "demo"], env=env)
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["datasets", "show", "demo", "--json"], env=env)
    detail = json.loads(shown.stdout)
    assert (detail["patients"], detail["studies"], detail["objects"]) == (2, 10, 60)
    assert runner.invoke(app, ["export", "demo", str(tmp_path / "out")], env=env).exit_code == 0
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == 60
    patient = files[0].relative_to(tmp_path / "out").parts[0]
    refused = runner.invoke(app, ["shred", "--dataset", "demo", "--patient", patient], env=env, input="n\n")
    assert refused.exit_code == 1
    done = runner.invoke(app, ["shred", "--dataset", "demo", "--patient", patient, "--yes"], env=env)
    assert done.exit_code == 0 and "rotated" in done.output
    audit = runner.invoke(app, ["audit", "show", "--action", "dataset.*", "--json"], env=env)
    actions = [json.loads(line)["action"] for line in audit.stdout.splitlines()]
    assert actions == ["dataset.ingest", "dataset.export", "dataset.shred"]


@pytest.mark.parametrize(
    ("age", "band"),
    [("045Y", "40-49"), ("089Y", "80-89"), ("090Y", "90+"), ("006M", "0-9"), ("", ""), ("bad", "")],
)
def test_age_bands(age: str, band: str) -> None:
    assert age_band(age) == band


def test_objects_are_bound_to_their_identity(runtime: Runtime, cohort: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    objects = stored_objects(runtime)
    key = sorted(objects)[0]
    with runtime.sessions() as session:
        record = session.execute(select(ObjectRecord).where(ObjectRecord.object_key == key)).scalar_one()
    vault = DatasetVault(DATASET, runtime.keys, runtime.sessions)
    plaintext = vault.open(objects[key], record.study_uid, key, record.plain_sha256)
    assert hashlib.sha256(plaintext).hexdigest() == record.plain_sha256
    with pytest.raises(ObjectIntegrityError):
        vault.open(objects[key], record.study_uid, key.replace(".enc", "x.enc"))
    shutil.rmtree(runtime.settings.data_dir / "reports", ignore_errors=True)
