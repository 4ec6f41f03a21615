"""Ingest's workers seal and store; the parent indexes: failures, durability order, duplicates, keys."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import delete, select

from connector.crypto.dataset_secrets import load_or_create_dataset_secret
from connector.crypto.envelope import generate_data_key
from connector.datasets.export import export_dataset
from connector.datasets.ingest import ConcurrentIngest, ingest
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.vault import ObjectIntegrityError, RunKeys
from connector.deid import batch
from connector.deid.batch import run_batch
from connector.deid.keys import DatasetKeys
from connector.deid.options import DEFAULT_OPTIONS
from connector.deid.recipes import compile_recipes
from connector.runtime import Runtime
from connector.storage.objects import STAGING, ObjectStoreError, Staged
from connector.synth import generate_cohort
from tests.deid_helpers import ct_instance
from tests.store_runtimes import runtime_on

DATASET = "ct-cohort"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=9)
    return folder


@pytest.fixture(params=["local", "s3"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runtime]:
    built = runtime_on(request, tmp_path, "iw")
    yield built
    built.close()


def indexed(runtime: Runtime) -> set[str]:
    with runtime.sessions() as session:
        return set(session.execute(select(ObjectRecord.object_key)).scalars())


def on_disk(runtime: Runtime) -> set[str]:
    """The local store's objects under their keys; staged bytes left behind count too."""
    root = runtime.settings.effective_objects_dir
    objects = {str(path.relative_to(root)) for path in root.rglob("*.enc")}
    staged = {f"staged:{path.name}" for path in (root / STAGING).glob("*")}
    return objects | staged


def reference_outputs(cohort: Path, runtime: Runtime, out: Path) -> dict[Path, bytes]:
    """What `connector deid` writes for the same inputs and secret (first input of an instance kept)."""
    secret = load_or_create_dataset_secret(runtime.settings.keys_dir, DATASET)
    run_batch(cohort, out, compile_recipes(DEFAULT_OPTIONS), DatasetKeys(secret), out.with_name("q"), DATASET)
    return {path.relative_to(out): path.read_bytes() for path in out.rglob("*.dcm")}


def exported(runtime: Runtime, out: Path) -> dict[Path, bytes]:
    export_dataset(runtime, DATASET, out)
    return {path.relative_to(out): path.read_bytes() for path in out.rglob("*.dcm")}


def test_a_failing_store_in_a_worker_leaves_no_index_row_for_its_object(
    runtime: Runtime, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_stage = runtime.objects.stage

    def fails(key: str) -> bool:  # about a quarter of the objects, the same in every worker process
        return hashlib.sha256(key.encode()).hexdigest()[0] in "0123"

    def failing_stage(key: str, data: bytes) -> Staged:
        if fails(key):
            raise ObjectStoreError(f"simulated: no space left for {key}")
        return original_stage(key, data)

    monkeypatch.setattr(runtime.objects, "stage", failing_stage)  # inherited by the forked workers
    with pytest.raises(ObjectStoreError, match="simulated"):
        ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    first = indexed(runtime)
    assert first and not {key for key in first if fails(key)}  # nothing unstored is indexed
    assert all(runtime.objects.exists(key) for key in first)
    assert len(exported(runtime, tmp_path / "partial")) == len(first)  # every indexed object opens
    if runtime.settings.object_store == "local":
        assert on_disk(runtime) == first

    monkeypatch.setattr(runtime.objects, "stage", original_stage)
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    assert (summary.already_stored, summary.stored) == (len(first), 60 - len(first))
    assert exported(runtime, tmp_path / "all") == reference_outputs(cohort, runtime, tmp_path / "ref")


def test_objects_are_durable_before_the_index_names_them(
    runtime: Runtime, cohort: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published: set[str] = set()
    original_publish = runtime.objects.publish

    def checking_publish(staged: Iterable[Staged]) -> None:
        batch = list(staged)
        keys = {item.key for item in batch}
        assert not keys & indexed(runtime), "an object was indexed before it was published"
        original_publish(batch)
        published.update(keys)

    monkeypatch.setattr(runtime.objects, "publish", checking_publish)  # only the parent publishes
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    assert summary.stored == 60
    assert indexed(runtime) == published


def test_study_keys_agree_across_workers_and_are_stored_wrapped(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    # Every study has objects sealed by both workers; all of them open with the one wrapped key.
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    with runtime.sessions() as session:
        studies = list(session.execute(select(StudyRecord)).scalars())
    assert len(studies) == summary.studies == 10
    assert all(study.wrapped_key and study.key_id.startswith(f"{DATASET}/v") for study in studies)
    assert {"CT", "MR", "US", "SR"} <= {m for study in studies for m in study.modalities.split(",")}
    assert exported(runtime, tmp_path / "out") == reference_outputs(cohort, runtime, tmp_path / "ref")


def test_run_keys_are_one_per_study_the_same_in_every_process() -> None:
    keys = RunKeys("ds", {"known-study": b"\x07" * 32}, b"\x01" * 32)
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        derived = pool.map(keys.data_key, ["1.2.3", "1.2.3", "1.2.4"])
    assert derived[0] == derived[1] == keys.data_key("1.2.3") != derived[2]
    assert len(derived[0]) == 32
    assert keys.data_key("known-study") == b"\x07" * 32 and not keys.is_new("known-study")
    assert RunKeys("ds", {}, b"\x02" * 32).data_key("1.2.3") != derived[0]  # a new run, new keys
    assert RunKeys("other", {}, b"\x01" * 32).data_key("1.2.3") != derived[0]
    assert "\\x01" not in repr(keys) and "\\x07" not in repr(keys)


def _duplicates(folder: Path, later_folder: Path | None = None) -> tuple[Path, Path]:
    """Two inputs of one SOP instance with different content, in different studies."""
    first = folder / "a.dcm"
    ds = ct_instance(first)
    later = (later_folder or folder) / "b.dcm"
    later.parent.mkdir(parents=True, exist_ok=True)
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.9999"
    ds.SliceThickness = "2"
    ds.save_as(later, enforce_file_format=True)
    assert dcmread(later).SOPInstanceUID == dcmread(first).SOPInstanceUID
    return first, later


def test_a_duplicate_stored_first_is_replaced_by_the_first_input(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later input of an instance won the race to store: the first one is stored again."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _duplicates(inputs)
    real_claim = batch._claim
    calls = []

    def later_input_claims_first(sop_instance_uid: str) -> bool:
        calls.append(sop_instance_uid)
        return False if len(calls) == 1 else real_claim(sop_instance_uid)  # as if b.dcm got there first

    monkeypatch.setattr(batch, "_claim", later_input_claims_first)
    summary = ingest(runtime, inputs, DATASET, DEFAULT_OPTIONS, workers=1)
    assert len(calls) == 2
    assert (summary.stored, summary.deid.written, summary.deid.skipped) == (1, 1, 1)
    assert summary.deid.report["skipped"][0]["reason_code"] == "duplicate_instance"
    reference = reference_outputs(inputs, runtime, tmp_path / "ref")
    assert exported(runtime, tmp_path / "out") == reference  # a.dcm's bytes, not b.dcm's
    with runtime.sessions() as session:
        studies = list(session.execute(select(StudyRecord.study_uid)).scalars())
    assert [Path(path).parts[1] for path in reference] == studies  # no study for b.dcm's
    if runtime.settings.object_store == "local":
        assert on_disk(runtime) == indexed(runtime)  # b.dcm's object was removed: no orphan
    else:
        assert [key for key in runtime.objects.list("datasets/")] == sorted(indexed(runtime))  # type: ignore[attr-defined]


def test_duplicates_across_parallel_workers_keep_the_first_input(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    shutil.copytree(cohort, inputs)
    for index in range(4):  # more inputs of the same instances, some changed, far apart in the order
        folder = inputs / f"dup-{index}"
        folder.mkdir()
        _duplicates(folder, inputs / f"zz-{index}")
        source = sorted(cohort.rglob("*.dcm"))[index * 7]
        shutil.copy(source, inputs / f"copy-{index}.dcm")
    summary = ingest(runtime, inputs, DATASET, DEFAULT_OPTIONS, workers=2)
    assert summary.deid.skipped == 1 + 4 + 4  # the manifest, one of each pair, each copy
    assert exported(runtime, tmp_path / "out") == reference_outputs(inputs, runtime, tmp_path / "ref")
    if runtime.settings.object_store == "local":
        assert on_disk(runtime) == indexed(runtime)


def test_a_study_added_by_another_ingest_meanwhile_stops_this_one_cleanly(
    runtime: Runtime, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original_publish = runtime.objects.publish
    intruded: list[str] = []

    def another_ingest_adds_a_study(staged: Iterable[Staged]) -> None:
        batch = list(staged)
        if not intruded:  # before the first batch is indexed, another run stores one of its studies
            study_uid = batch[0].key.split("/")[2]
            wrapped = runtime.keys.wrap(DATASET, generate_data_key())
            with runtime.sessions() as session, session.begin():
                session.add(
                    StudyRecord(
                        dataset=DATASET,
                        study_uid=study_uid,
                        patient_pseudonym="other-run",
                        wrapped_key=json.dumps(wrapped.to_dict()),
                        key_id=wrapped.key_id,
                    )
                )
            intruded.append(study_uid)
        original_publish(batch)

    monkeypatch.setattr(runtime.objects, "publish", another_ingest_adds_a_study)
    with pytest.raises(ConcurrentIngest, match="run this ingest again"):
        ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    assert not indexed(runtime)  # nothing sealed under this run's key is indexed under the other's
    monkeypatch.setattr(runtime.objects, "publish", original_publish)
    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    assert summary.stored == 60  # the study's objects are sealed again, with the stored key
    assert len(exported(runtime, tmp_path / "out")) == 60


def test_each_instance_is_claimed_once_across_worker_processes() -> None:
    claims = batch._Claims(200)
    uids = [f"2.25.{index}" for index in range(200)]
    context = multiprocessing.get_context("fork")
    with context.Pool(2, initializer=batch._init_worker, initargs=(None, None, None, claims)) as pool:
        won = pool.map(batch._claim, uids + uids[::-1] + uids, chunksize=7)
    winners: dict[str, int] = {}
    for uid, first in zip(uids + uids[::-1] + uids, won, strict=True):
        winners[uid] = winners.get(uid, 0) + first
    assert set(winners.values()) == {1}  # every instance claimed exactly once, by one process
    assert claims.claim("2.25.new") and not claims.claim("2.25.new")


def test_a_study_whose_key_cannot_be_unwrapped_fails_alone(runtime: Runtime, cohort: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    with runtime.sessions() as session, session.begin():
        study = session.execute(select(StudyRecord)).scalars().first()
        assert study is not None
        damaged = json.loads(study.wrapped_key)
        damaged["ciphertext"] = base64.b64encode(b"\x00" * 60).decode()
        study.wrapped_key = json.dumps(damaged)
        lost = set(
            session.execute(
                select(ObjectRecord.object_key).where(ObjectRecord.study_uid == study.study_uid)
            ).scalars()
        )
        session.execute(delete(ObjectRecord).where(ObjectRecord.study_uid == study.study_uid))
        broken_uid = study.study_uid
    before = indexed(runtime)
    with pytest.raises(ObjectIntegrityError, match=f"study {broken_uid} cannot be unwrapped"):
        ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, workers=2)
    assert indexed(runtime) == before and not before & lost  # the others stay; none of its objects
