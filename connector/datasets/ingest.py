"""Ingest: de-identify a folder, then encrypt, store and index every instance of a dataset.

De-identified files exist only in a staging folder inside the data directory and are purged
afterwards; the object store only ever receives ciphertext. Ingest is resumable: an object is
recorded in the index only after it is stored, a re-run re-derives the same de-identified bytes
(keyed, deterministic) and skips what is already stored, so there are no duplicates or orphans.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import select

from connector.audit.chain import canonical_json
from connector.crypto.dataset_secrets import load_or_create_dataset_secret, validate_dataset_name
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.datasets.vault import DatasetVault, object_key_for
from connector.deid.batch import INCOMING, REPORT_NAME, RunSummary, run_batch
from connector.deid.keys import DatasetKeys
from connector.deid.recipes import compile_recipes
from connector.runtime import Runtime


class DatasetConflict(ValueError):
    """The dataset exists with other settings; the message shows the difference."""


@dataclass(frozen=True)
class IngestSummary:
    dataset: str
    deid: RunSummary
    stored: int
    already_stored: int
    studies: int
    plain_bytes: int
    stored_bytes: int


def age_band(age: str) -> str:
    """A ten-year band from a DICOM age string (ages over 89 in one band)."""
    age = age.strip()
    if len(age) != 4 or not age[:3].isdigit():
        return ""
    years = int(age[:3]) if age[3] == "Y" else 0
    return "90+" if years >= 90 else f"{years // 10 * 10}-{years // 10 * 10 + 9}"


def ensure_dataset(runtime: Runtime, name: str, options: tuple[str, ...]) -> None:
    """Create the dataset record and its key, or check that an existing one has the same settings."""
    validate_dataset_name(name)
    wanted = {"profile": "basic", "options": list(options), "store": runtime.settings.object_store}
    with runtime.sessions() as session, session.begin():
        record = session.get(DatasetRecord, name)
        if record is None:
            session.add(
                DatasetRecord(
                    name=name,
                    created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                    profile="basic",
                    options=canonical_json(list(options)),
                    store=runtime.settings.object_store,
                )
            )
        else:
            existing = {
                "profile": record.profile,
                "options": json.loads(record.options),
                "store": record.store,
            }
            if existing != wanted:
                differences = "; ".join(
                    f"{key}: dataset has {existing[key]}, this run asks for {wanted[key]}"
                    for key in wanted
                    if existing[key] != wanted[key]
                )
                raise DatasetConflict(f"dataset {name!r} already exists with other settings ({differences})")
    runtime.keys.create_dataset_key(name)


def ingest(
    runtime: Runtime,
    in_dir: Path,
    dataset: str,
    options: tuple[str, ...],
    quarantine_dir: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> IngestSummary:
    plan = compile_recipes(options)
    ensure_dataset(runtime, dataset, plan.options)
    settings = runtime.settings
    staging_root = settings.data_dir / "staging"
    for stale in staging_root.glob(f"{dataset}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run: never re-used
    staging = staging_root / f"{dataset}-{secrets.token_hex(4)}"
    keys = DatasetKeys(load_or_create_dataset_secret(settings.keys_dir, dataset))
    try:
        deid = run_batch(
            in_dir,
            staging,
            plan,
            keys,
            quarantine_dir or settings.data_dir / "quarantine",
            dataset,
            workers=workers,
            progress=progress,
            on_total=on_total,
        )
        stored, already, plain_bytes, stored_bytes = _store_all(runtime, dataset, staging)
        # The report outlives the staging folder (it holds no PHI).
        reports = settings.data_dir / "reports" / dataset
        reports.mkdir(parents=True, exist_ok=True)
        kept_report = reports / f"deid-{deid.report['run_id']}.json"
        shutil.copyfile(deid.report_path, kept_report)
        deid.report_path = kept_report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with runtime.sessions() as session:
        studies = len(session.execute(select(StudyRecord.id).where(StudyRecord.dataset == dataset)).all())
    return IngestSummary(dataset, deid, stored, already, studies, plain_bytes, stored_bytes)


_HEADER_TAGS = ["Modality", "BodyPartExamined", "PatientSex", "PatientAge", "StudyDate", "Manufacturer"]
_BATCH = 200  # index rows per transaction: one commit per object would cost more than the encryption


_STORE_THREADS = 4  # uploads and fsyncs overlap (they release the GIL); header parsing does not


def _store_all(runtime: Runtime, dataset: str, staging: Path) -> tuple[int, int, int, int]:
    vault = DatasetVault(dataset, runtime.keys, runtime.sessions)
    with runtime.sessions() as session:
        recorded = set(
            session.execute(select(ObjectRecord.object_key).where(ObjectRecord.dataset == dataset)).scalars()
        )
    work = []
    already = 0
    for path in sorted(staging.rglob("*.dcm")):
        relative = path.relative_to(staging)
        if INCOMING in relative.parts or path.name == REPORT_NAME:
            continue
        _, study_uid, series_uid, sop_file = relative.parts
        object_key = object_key_for(dataset, study_uid, series_uid, sop_file.removesuffix(".dcm"))
        if object_key in recorded and runtime.objects.exists(object_key):
            already += 1
        else:
            work.append((path, relative, object_key))
    study_lock = threading.Lock()

    def seal_and_store(item: tuple[Path, Path, str]) -> ObjectRecord:
        path, relative, object_key = item
        pseudonym, study_uid, series_uid, sop_file = relative.parts
        plaintext = path.read_bytes()
        # Parsed from the bytes already read: the staged file is read once.
        header = dcmread(io.BytesIO(plaintext), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        with study_lock:  # one data key per study, created once
            data_key, _ = vault.study_key(study_uid, pseudonym, _study_attributes(header))
        ciphertext = vault.seal(plaintext, study_uid, object_key, data_key)
        runtime.objects.put(object_key, ciphertext)
        return ObjectRecord(
            dataset=dataset,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_file.removesuffix(".dcm"),
            object_key=object_key,
            relative_path=str(relative),
            modality=str(header.get("Modality", "") or "")[:16],
            plain_size=len(plaintext),
            stored_size=len(ciphertext),
            plain_sha256=hashlib.sha256(plaintext).hexdigest(),
        )

    stored = plain_bytes = stored_bytes = 0
    pending: list[ObjectRecord] = []
    modalities: dict[str, set[str]] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(_STORE_THREADS, thread_name_prefix="seal") as pool:
        futures = [pool.submit(seal_and_store, item) for item in work]
        for future in futures:
            try:
                record = future.result()
            except Exception as exc:  # keep indexing what did get stored, then report the failure
                failure = failure or exc
                continue
            # Indexed only once stored (in batches): after a crash, a stored but unindexed object is
            # simply sealed and stored again by the next run, so nothing is orphaned or doubled.
            pending.append(record)
            modalities.setdefault(record.study_uid, set()).add(record.modality)
            stored += 1
            plain_bytes += record.plain_size
            stored_bytes += record.stored_size
            if len(pending) >= _BATCH:
                _flush(runtime, dataset, pending, modalities, recorded)
    _flush(runtime, dataset, pending, modalities, recorded)
    if failure is not None:
        raise failure
    return stored, already, plain_bytes, stored_bytes


def _flush(
    runtime: Runtime,
    dataset: str,
    pending: list[ObjectRecord],
    modalities: dict[str, set[str]],
    recorded: set[str],
) -> None:
    with runtime.sessions() as session, session.begin():
        session.add_all(record for record in pending if record.object_key not in recorded)
        for row in session.execute(
            select(StudyRecord).where(
                StudyRecord.dataset == dataset, StudyRecord.study_uid.in_(list(modalities))
            )
        ).scalars():
            present = set(filter(None, row.modalities.split(",")))
            row.modalities = ",".join(sorted(present | (modalities[row.study_uid] - {""})))[:128]
    recorded.update(record.object_key for record in pending)
    pending.clear()
    modalities.clear()


def _study_attributes(ds: object) -> dict[str, str]:
    get = ds.get  # type: ignore[attr-defined]
    date = str(get("StudyDate", "") or "")
    return {
        "modalities": "",
        "body_part": str(get("BodyPartExamined", "") or "")[:64],
        "sex": str(get("PatientSex", "") or "")[:8],
        "age_band": age_band(str(get("PatientAge", "") or "")),
        "study_year": date[:4] if len(date) >= 4 else "",
        "manufacturer": str(get("Manufacturer", "") or "")[:64],
    }
