"""Crypto-shredding: make a patient's, a study's or a whole dataset's data undecryptable for good.

For a patient or study: the objects are deleted, the studies' wrapped keys removed from the
index, and the dataset's key-encryption key is rotated, every remaining study key re-wrapped and
every older KEK version retired. A database backup still holds the shredded studies' wrapped keys,
but only under KEK versions that no longer exist, so a bucket copy taken before stays
undecryptable. A shredded patient is remembered by pseudonym (`connector.datasets.refusals`)
before anything is deleted, so no later ingest re-admits them. For a dataset: its KEKs are
destroyed, its objects, index rows, refusals and pseudonym secret deleted (the name may then be
reused by a new dataset, with new pseudonyms). This module never asks for confirmation: the CLI does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import delete, select

from connector.crypto.keystore import WrappedKey
from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.datasets.refusals import forget_dataset, remember
from connector.runtime import Runtime


@dataclass(frozen=True)
class ShredResult:
    dataset: str
    studies: int
    objects: int
    new_key_id: str | None


def shred(
    runtime: Runtime,
    dataset: str,
    patient: str | None = None,
    study: str | None = None,
    actor: str = "system",
    reason: str = "shredded",
) -> ShredResult:
    """Shred one patient (by pseudonym), one study (by de-identified UID), or, with neither, the dataset.

    A shredded patient is refused by every later ingest of the dataset (`reason` and `actor` are
    kept with the refusal) until a DPO readmits them.
    """
    with runtime.sessions() as session:
        if session.get(DatasetRecord, dataset) is None:
            raise LookupError(f"no dataset {dataset!r}")
        query = select(StudyRecord).where(StudyRecord.dataset == dataset)
        if patient is not None:
            query = query.where(StudyRecord.patient_pseudonym == patient)
        if study is not None:
            query = query.where(StudyRecord.study_uid == study)
        studies = [row.study_uid for row in session.execute(query).scalars()]
        objects = list(
            session.execute(
                select(ObjectRecord.object_key).where(
                    ObjectRecord.dataset == dataset, ObjectRecord.study_uid.in_(studies)
                )
            ).scalars()
        )
    if (patient is not None or study is not None) and not studies:
        raise LookupError("nothing to shred: no study of that patient or UID in the dataset")
    whole = patient is None and study is None
    if patient is not None:
        # First, in its own transaction: an ingest running meanwhile refuses the patient from now on.
        with runtime.sessions() as session, session.begin():
            remember(session, dataset, [patient], reason, actor)
    if whole:
        runtime.keys.destroy(dataset)  # first: from now on nothing of it can be decrypted
    for key in objects:
        runtime.objects.delete(key)
    with runtime.sessions() as session, session.begin():
        session.execute(
            delete(ObjectRecord).where(ObjectRecord.dataset == dataset, ObjectRecord.study_uid.in_(studies))
        )
        session.execute(
            delete(StudyRecord).where(StudyRecord.dataset == dataset, StudyRecord.study_uid.in_(studies))
        )
        if whole:
            forget_dataset(session, dataset)
            session.execute(delete(DatasetRecord).where(DatasetRecord.name == dataset))
    if whole:
        (runtime.settings.keys_dir / "datasets" / f"{dataset}.secret").unlink(missing_ok=True)
        return ShredResult(dataset, len(studies), len(objects), None)
    return ShredResult(dataset, len(studies), len(objects), rotate_dataset_key(runtime, dataset))


def rotate_dataset_key(runtime: Runtime, dataset: str) -> str:
    """New KEK version, every study key re-wrapped under it, every older version retired."""
    new_key_id = runtime.keys.rotate(dataset)
    with runtime.sessions() as session, session.begin():
        for row in session.execute(select(StudyRecord).where(StudyRecord.dataset == dataset)).scalars():
            rewrapped = runtime.keys.rewrap(dataset, WrappedKey.from_dict(json.loads(row.wrapped_key)))
            row.wrapped_key = json.dumps(rewrapped.to_dict())
            row.key_id = rewrapped.key_id
    for status in runtime.keys.status():
        if status.dataset == dataset:
            for key_id in status.key_ids:
                if key_id != new_key_id:
                    runtime.keys.retire(dataset, key_id)
    return new_key_id
