"""Ingest: de-identify a folder, then encrypt, store and index every instance of a dataset.

What it does: the de-identification workers (`connector.deid.batch`) seal each output with its
study's data key and stage it in the object store themselves, in parallel (on a thread, while
they de-identify the next file), and send back only a small index row; the parent process
indexes those rows in batches, each batch only once the object store has published it
(`ObjectStore.publish`: every object durable under its key). Study keys stay consistent across
workers without coordination (`RunKeys`: keys of known studies, and keys of new studies derived
from a per-run secret); the parent stores a new study's wrapped key in the same transaction as
its first index rows. Two inputs of one SOP instance never both store it: the batch lets one
claim it.

What it must never do: write de-identified plaintext anywhere but into the object store, sealed
(it stays in worker memory; the staging folder holds only the de-identification report);
index an object that is not durably stored (after a crash, a stored but unindexed object is
simply sealed and stored again by the next run, so there are no duplicates or orphans: ingest is
resumable, and re-derives the same de-identified bytes, keyed and deterministic); let one object
that cannot be stored stop the others (the first failure is raised once everything else is
stored and indexed); store anything of a patient the dataset refuses (crypto-shredded or erased,
see `connector.datasets.refusals`): their instances are de-identified only to learn whose they
are, then counted as refused, never sealed, stored, indexed or quarantined.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import secrets
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from connector.atomic_files import write_atomically
from connector.audit.chain import canonical_json
from connector.crypto.dataset_secrets import load_or_create_dataset_secret, validate_dataset_name
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.datasets.refusals import refused_among, refused_pseudonyms
from connector.datasets.vault import DatasetVault, RunKeys, object_key_for
from connector.deid.batch import Outcome, RunSummary, run_batch
from connector.deid.engine import Deidentified
from connector.deid.keys import DatasetKeys
from connector.deid.recipes import compile_recipes
from connector.runtime import Runtime
from connector.storage.objects import ObjectStore, ObjectStoreError, Staged


class DatasetConflict(ValueError):
    """The dataset exists with other settings; the message shows the difference."""


class ConcurrentIngest(DatasetConflict):
    """Another ingest added the same study to the dataset while this one ran; run it again."""


@dataclass(frozen=True)
class IngestSummary:
    dataset: str
    deid: RunSummary
    stored: int
    already_stored: int
    studies: int
    plain_bytes: int
    stored_bytes: int
    # Instances and patients refused because the dataset erased the patient (nothing of them stored).
    refused: int = 0
    refused_patients: int = 0


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
    plan = compile_recipes(options, recipes_dir=runtime.settings.deid_recipes_dir)
    ensure_dataset(runtime, dataset, plan.options)
    settings = runtime.settings
    staging_root = settings.data_dir / "staging"
    for stale in staging_root.glob(f"{dataset}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted run: never re-used
    staging = staging_root / f"{dataset}-{secrets.token_hex(4)}"
    keys = DatasetKeys(load_or_create_dataset_secret(settings.keys_dir, dataset))
    sink = _IndexingSink(runtime, dataset)
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
            sink=sink,
        )
        if sink.failure is not None:
            raise sink.failure  # everything else is stored and indexed: a re-run stores the rest
        # The report outlives the staging folder (it holds no PHI).
        reports = settings.data_dir / "reports" / dataset
        reports.mkdir(parents=True, exist_ok=True, mode=0o700)
        for folder in (reports, reports.parent):
            os.chmod(folder, 0o700)  # private whatever the umask (issue #14)
        kept_report = reports / f"deid-{deid.report['run_id']}.json"
        write_atomically(kept_report, deid.report_path.read_bytes(), mode=0o600)
        deid.report_path = kept_report
        if sink.refused_patients:
            _drop_refused_from_report(deid.report, kept_report, sink.refused_patients, sink.refused)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with runtime.sessions() as session:
        studies = len(session.execute(select(StudyRecord.id).where(StudyRecord.dataset == dataset)).all())
    return IngestSummary(
        dataset,
        deid,
        sink.stored,
        sink.already,
        studies,
        sink.plain_bytes,
        sink.stored_bytes,
        sink.refused,
        len(sink.refused_patients),
    )


def _drop_refused_from_report(
    report: dict[str, Any], path: Path, patients: set[str], instances: int
) -> None:
    """The kept report lists no study of a refused patient: the dataset holds nothing of them."""
    report["studies"] = [study for study in report["studies"] if study["patient_pseudonym"] not in patients]
    report["refused_erased_patient"] = {"patients": len(patients), "instances": instances}
    write_atomically(path, json.dumps(report, indent=2, ensure_ascii=False).encode(), mode=0o600)


_LAST_HEADER_TAG = max(
    Tag(keyword)
    for keyword in ("Modality", "BodyPartExamined", "PatientSex", "PatientAge", "StudyDate", "Manufacturer")
)
# Never expected (a study's attributes reach the parent before its first row), but a study
# without them is still indexed rather than lost.
_BLANK_STUDY = {
    "modalities": "",
    "body_part": "",
    "sex": "",
    "age_band": "",
    "study_year": "",
    "manufacturer": "",
}
_BATCH = 200  # index rows per transaction: one commit per object would cost more than the encryption
_STORING_THREADS = 2  # per worker process: enough to hide an S3 round trip
_STORING_AHEAD = 4  # objects sealed and waiting to be stored, per worker process (bounds memory)


class _Receipt:
    """What a worker sends back for one output (small: it is pickled to the parent).

    The object may still be being stored when the worker hands the receipt over: the receipt
    waits for that before it is pickled (the pool pickles a whole chunk's results at once, after
    the chunk, so storing overlaps with de-identifying the chunk's next files) and before it is
    read in the parent (with one worker, nothing is pickled). Its row is there only once the
    object is stored; a failure to store becomes its `error`.
    """

    __slots__ = ("_put", "_row", "already", "error", "object_key", "refused", "staged", "study")

    def __init__(
        self,
        object_key: str,
        row: dict[str, Any] | None = None,
        study: dict[str, str] | None = None,
        already: bool = False,
        error: BaseException | None = None,
        put: Future[Staged] | None = None,
        refused: bool = False,
    ) -> None:
        self.object_key = object_key
        self.refused = refused  # the patient was erased from the dataset: nothing stored
        self.staged: Staged | None = None  # the object, written and waiting to be published
        self.study = study  # cohort attributes of a study new to the dataset
        self.already = already  # recorded by an earlier run and still in the store: left as it is
        self.error = error  # sealing or storing failed: no row
        self._row = row
        self._put = put

    def _settle(self) -> None:
        if self._put is not None:
            failure = self._put.exception()  # waits for the store to finish
            if failure is None:
                self.staged = self._put.result()
            else:
                self._row, self.error = None, _portable(failure)
            self._put = None

    @property
    def row(self) -> dict[str, Any] | None:
        """The index row, when the object is stored."""
        self._settle()
        return self._row

    def failed(self) -> BaseException | None:
        self._settle()
        return self.error

    def __getstate__(self) -> tuple[object, ...]:
        self._settle()
        return (self.object_key, self._row, self.study, self.already, self.error, self.staged, self.refused)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.object_key, self._row, self.study, self.already, self.error, self.staged, self.refused) = state
        self._put = None


class _IndexingSink:
    """The ingest's `OutputSink`: workers seal and store, the parent indexes in batches.

    Built in the parent before the workers fork, so every worker shares its run keys and the set
    of object keys recorded when the run began. `store` runs in the workers; `keep`, `drop` and
    `finish` run in the parent.
    """

    in_place = True  # object keys are final names: one store per instance (the batch claims them)

    def __init__(self, runtime: Runtime, dataset: str) -> None:
        self.dataset = dataset
        self.objects: ObjectStore = runtime.objects
        self.sessions = runtime.sessions
        self.vault = DatasetVault(dataset, runtime.keys, runtime.sessions)
        self.run_keys: RunKeys = self.vault.run_keys()
        with runtime.sessions() as session:
            self.recorded: set[str] = set(
                session.execute(
                    select(ObjectRecord.object_key).where(ObjectRecord.dataset == dataset)
                ).scalars()
            )
        # Read before the workers fork; a patient erased while the run goes on is caught at indexing.
        self.refusing: frozenset[str] = refused_pseudonyms(runtime.sessions, dataset)
        # Per process: new studies whose attributes this process has already sent to the parent,
        # and the threads that store objects while the process de-identifies the next files.
        self._described: set[str] = set()
        self._storing: ThreadPoolExecutor | None = None
        self._storing_slots: threading.BoundedSemaphore | None = None
        # Parent only, from here on.
        self.stored = self.already = self.plain_bytes = self.stored_bytes = self.refused = 0
        self.refused_patients: set[str] = set()
        self.failure: BaseException | None = None
        self._pending: list[dict[str, Any]] = []
        self._staged: list[Staged] = []
        self._pseudonyms: dict[str, str] = {}
        self._attributes: dict[str, dict[str, str]] = {}
        self._modalities: dict[str, set[str]] = {}
        self._indexed_studies: set[str] = set()

    # -- in a worker ------------------------------------------------------------------------------

    def store(self, result: Deidentified) -> _Receipt:
        study_uid = result.study_uid
        object_key = object_key_for(self.dataset, study_uid, result.series_uid, result.sop_instance_uid)
        if result.pseudonym in self.refusing:
            return _Receipt(object_key, refused=True)  # never sealed: no key, no object, no row
        # A new study's attributes come from the first object of it that this process sees: the
        # parent reads receipts in input order, so it has them before any later row of the study.
        study = None
        if self.run_keys.is_new(study_uid) and study_uid not in self._described:
            study = _study_attributes(result.encoded)
            self._described.add(study_uid)
        try:
            if object_key in self.recorded and self.objects.exists(object_key):
                return _Receipt(object_key, study=study, already=True)
            ciphertext = self.run_keys.seal(result.encoded, study_uid, object_key)
        except Exception as exc:  # reported by the parent once everything else is indexed
            return _Receipt(object_key, study=study, error=_portable(exc))
        row = {
            "dataset": self.dataset,
            "study_uid": study_uid,
            "series_uid": result.series_uid,
            "sop_instance_uid": result.sop_instance_uid,
            "object_key": object_key,
            "relative_path": result.relative_path,
            "modality": result.modality,
            "plain_size": len(result.encoded),
            "stored_size": len(ciphertext),
            "plain_sha256": hashlib.sha256(result.encoded).hexdigest(),
        }
        return _Receipt(object_key, row=row, study=study, put=self._put_soon(object_key, ciphertext))

    def _put_soon(self, object_key: str, ciphertext: bytes) -> Future[Staged]:
        """Stage on a thread of this process: the write (an S3 round trip) overlaps with the next
        file's de-identification. At most `_STORING_AHEAD` objects wait, which bounds memory."""
        if self._storing is None or self._storing_slots is None:  # first use in this process
            self._storing = ThreadPoolExecutor(_STORING_THREADS, thread_name_prefix="ingest-store")
            self._storing_slots = threading.BoundedSemaphore(_STORING_AHEAD)
        slots = self._storing_slots
        slots.acquire()
        future = self._storing.submit(self.objects.stage, object_key, ciphertext)
        future.add_done_callback(lambda _: slots.release())
        return future

    # -- in the parent ----------------------------------------------------------------------------

    def keep(self, outcome: Outcome) -> None:
        receipt: _Receipt = outcome.receipt
        if receipt.refused:
            self._refuse(outcome.pseudonym or "")
            return
        self._note_study(outcome)
        error = receipt.failed()
        if error is not None:
            self.failure = self.failure or error
            return
        if receipt.already or receipt.row is None:
            self.already += 1
            return
        row = receipt.row
        self._pending.append(row)
        assert receipt.staged is not None  # a stored row's object was staged (_Receipt._settle)
        self._staged.append(receipt.staged)
        self._pseudonyms.setdefault(row["study_uid"], outcome.pseudonym or "")
        self._modalities.setdefault(row["study_uid"], set()).add(row["modality"])
        self.stored += 1
        self.plain_bytes += row["plain_size"]
        self.stored_bytes += row["stored_size"]
        if len(self._pending) >= _BATCH:
            self._flush()

    def drop(self, outcome: Outcome) -> None:
        """A duplicate: the object it staged is dropped (no orphan, nothing of it published).

        Where staging wrote the object (S3), that deletes it; it can only have been missing or
        unindexed before. The instance's first input, deferred by the batch, is stored later.
        """
        receipt: _Receipt = outcome.receipt
        self._note_study(outcome)
        if receipt.row is not None and receipt.staged is not None:
            self.objects.discard(receipt.staged)

    def finish(self) -> None:
        self._flush()
        if self._storing is not None:  # used in this process when the batch ran with one worker
            self._storing.shutdown()

    def _refuse(self, pseudonym: str) -> None:
        self.refused += 1
        self.refused_patients.add(pseudonym)

    def _note_study(self, outcome: Outcome) -> None:
        receipt: _Receipt = outcome.receipt
        if receipt.study is not None and outcome.study_uid:
            self._attributes.setdefault(outcome.study_uid, receipt.study)

    def _flush(self) -> None:
        """Index the pending rows: durable objects first, then one transaction for the batch."""
        if not self._pending:
            return
        self._drop_newly_refused()
        if not self._pending:
            return
        rows = self._pending
        # An index row must never name an object a power loss could still take away.
        self.objects.publish(self._staged)
        new_studies = {
            study_uid: (
                self._pseudonyms[study_uid],
                self._attributes.get(study_uid) or _BLANK_STUDY,
            )
            for study_uid in dict.fromkeys(row["study_uid"] for row in rows)
            if self.run_keys.is_new(study_uid) and study_uid not in self._indexed_studies
        }
        conflict = ConcurrentIngest(
            f"another ingest added the same studies to dataset {self.dataset!r} while this one ran; "
            "run this ingest again (it resumes where it stopped)"
        )
        try:
            with self.sessions() as session, session.begin():
                if new_studies:
                    # Objects sealed with this run's keys must never be indexed under another key.
                    added_meanwhile = select(StudyRecord.study_uid).where(
                        StudyRecord.dataset == self.dataset, StudyRecord.study_uid.in_(list(new_studies))
                    )
                    if session.execute(added_meanwhile).first() is not None:
                        raise conflict
                    self.vault.add_studies(session, self.run_keys, new_studies)
                fresh = [row for row in rows if row["object_key"] not in self.recorded]
                if fresh:
                    session.execute(insert(ObjectRecord), fresh)
                studies = select(StudyRecord).where(
                    StudyRecord.dataset == self.dataset, StudyRecord.study_uid.in_(list(self._modalities))
                )
                for study in session.execute(studies).scalars():
                    present = set(filter(None, study.modalities.split(",")))
                    merged = present | (self._modalities[study.study_uid] - {""})
                    study.modalities = ",".join(sorted(merged))[:128]
        except IntegrityError:  # the same race, lost between the check and the insert
            raise conflict from None
        self._indexed_studies.update(new_studies)
        self.recorded.update(row["object_key"] for row in rows)
        self._pending = []
        self._staged = []
        self._modalities.clear()


    def _drop_newly_refused(self) -> None:
        """Pending rows of a patient erased since the run began: discarded, counted as refused."""
        by_study = {row["study_uid"]: self._pseudonyms.get(row["study_uid"], "") for row in self._pending}
        with self.sessions() as session:
            erased = refused_among(session, self.dataset, set(by_study.values()) - {""})
        if not erased:
            return
        kept_rows, kept_staged = [], []
        for row, staged in zip(self._pending, self._staged, strict=True):
            pseudonym = by_study[row["study_uid"]]
            if pseudonym in erased:
                self.objects.discard(staged)
                self.stored -= 1
                self.plain_bytes -= row["plain_size"]
                self.stored_bytes -= row["stored_size"]
                self._refuse(pseudonym)
            else:
                kept_rows.append(row)
                kept_staged.append(staged)
        self._pending, self._staged = kept_rows, kept_staged
        for study_uid, pseudonym in by_study.items():
            if pseudonym in erased:
                self._modalities.pop(study_uid, None)


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives the trip to the parent process, else an ObjectStoreError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes, never untrusted input)
    except Exception:
        return ObjectStoreError(f"storing an object failed: {type(exc).__name__}: {exc}")
    return exc


def _past_header_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _LAST_HEADER_TAG


def _study_attributes(encoded: bytes) -> dict[str, str]:
    """A study's coarse cohort attributes, from one of its de-identified instances."""
    # Reading stops at the first element after the last one needed: half the cost of a header read.
    get = read_partial(io.BytesIO(encoded), stop_when=_past_header_tags).get
    date = str(get("StudyDate", "") or "")
    return {
        "modalities": "",
        "body_part": str(get("BodyPartExamined", "") or "")[:64],
        "sex": str(get("PatientSex", "") or "")[:8],
        "age_band": age_band(str(get("PatientAge", "") or "")),
        "study_year": date[:4] if len(date) >= 4 else "",
        "manufacturer": str(get("Manufacturer", "") or "")[:64],
    }
