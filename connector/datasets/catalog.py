"""Read-only views of the encrypted datasets' de-identified index (counts for stewards and catalogs).

It reads pseudonymous metadata only and never opens an object or a key.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from connector.datasets.models import DatasetRecord, ObjectRecord, StudyRecord
from connector.runtime import Runtime


@dataclass(frozen=True)
class DatasetSummary:
    name: str
    created_at: str
    options: list[str]
    store: str
    patients: int
    studies: int
    objects: int
    plain_bytes: int


def dataset_summaries(runtime: Runtime) -> list[DatasetSummary]:
    with runtime.sessions() as session:
        summaries = []
        for record in session.execute(select(DatasetRecord).order_by(DatasetRecord.name)).scalars():
            patients, studies = session.execute(
                select(
                    func.count(func.distinct(StudyRecord.patient_pseudonym)), func.count(StudyRecord.id)
                ).where(StudyRecord.dataset == record.name)
            ).one()
            objects, size = session.execute(
                select(
                    func.count(ObjectRecord.id), func.coalesce(func.sum(ObjectRecord.plain_size), 0)
                ).where(ObjectRecord.dataset == record.name)
            ).one()
            summaries.append(
                DatasetSummary(
                    record.name,
                    record.created_at,
                    json.loads(record.options),
                    record.store,
                    patients,
                    studies,
                    objects,
                    int(size),
                )
            )
    return summaries


def dataset_detail(runtime: Runtime, name: str) -> dict[str, Any]:
    summary = next((item for item in dataset_summaries(runtime) if item.name == name), None)
    if summary is None:
        raise LookupError(f"no dataset {name!r}")
    with runtime.sessions() as session:
        studies = list(session.execute(select(StudyRecord).where(StudyRecord.dataset == name)).scalars())
    by: dict[str, Counter[str]] = {
        facet: Counter()
        for facet in ("modality", "body_part", "sex", "age_band", "study_year", "manufacturer")
    }
    for study in studies:
        for modality in filter(None, study.modalities.split(",")):
            by["modality"][modality] += 1
        for facet in ("body_part", "sex", "age_band", "study_year", "manufacturer"):
            by[facet][getattr(study, facet)] += 1
    return {
        "name": name,
        "options": summary.options,
        "store": summary.store,
        "patients": summary.patients,
        "studies": summary.studies,
        "objects": summary.objects,
        "plain_bytes": summary.plain_bytes,
        "by": {facet: dict(sorted(counts.items())) for facet, counts in by.items()},
    }
