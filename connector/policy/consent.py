"""The consent and opt-out registry, and the cohort filter that applies it.

Entries are keyed by (dataset, pseudonym): a hospital identifier given on import is turned into
each dataset's pseudonym with that dataset's secret and never stored. The latest entry for a
patient wins. Which statuses exclude a patient is not decided here: the Rego consent policy's
`include` rule is compiled by OPA into one SQL condition and the database applies it to the whole
cohort in one query (never one policy call per patient).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import utc_now_text
from connector.crypto.dataset_secrets import load_or_create_dataset_secret, validate_dataset_name
from connector.datasets.models import DatasetRecord
from connector.db.engine import transaction
from connector.deid.keys import DatasetKeys, patient_key
from connector.policy.models import ConsentRecord

STATUSES = ("opted-out", "withdrawn", "consented")
# Far above any hospital's registry export, small enough to refuse a wrong file quickly.
MAX_IMPORT_ROWS = 2_000_000


class ConsentImportError(ValueError):
    """The import file is unusable; nothing was imported. The message names the row."""


@dataclass(frozen=True)
class ConsentEntry:
    dataset: str
    pseudonym: str
    status: str
    source: str = ""


@dataclass(frozen=True)
class ImportResult:
    entries: int
    datasets: tuple[str, ...]
    by_status: dict[str, int]


def read_rows(path: Path) -> list[dict[str, str]]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConsentImportError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConsentImportError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return rows_from_json(document)
    reader = csv.DictReader(io.StringIO(raw))
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def rows_from_json(document: Any) -> list[dict[str, str]]:
    """Rows from a JSON list of objects (a file or an API body); ConsentImportError otherwise."""
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise ConsentImportError("a JSON import is a list of objects")
    return [{str(k): "" if v is None else str(v) for k, v in item.items()} for item in document]


def parse_entries(
    rows: Sequence[dict[str, str]], datasets: Sequence[str], keys_dir: Path, source: str
) -> list[ConsentEntry]:
    """Entries from rows with `status` and either `pseudonym` + `dataset`, or `patient_id`.

    A `patient_id` row (optionally with `issuer` and `dataset`) applies to the named dataset or to
    every dataset here; the identifier is turned into pseudonyms and dropped.
    """
    if len(rows) > MAX_IMPORT_ROWS:
        raise ConsentImportError(f"more than {MAX_IMPORT_ROWS} rows; split the file")
    keys: dict[str, DatasetKeys] = {}
    entries = []
    for number, row in enumerate(rows, start=2):
        where = f"row {number}"
        status = row.get("status", "").lower()
        if status not in STATUSES:
            raise ConsentImportError(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")
        dataset = row.get("dataset", "")
        if dataset:
            try:
                validate_dataset_name(dataset)
            except ValueError as exc:
                raise ConsentImportError(f"{where}: {exc}") from None
            if dataset not in datasets:
                raise ConsentImportError(f"{where}: there is no dataset {dataset!r} here")
        if row.get("pseudonym"):
            if not dataset:
                raise ConsentImportError(
                    f"{where}: a pseudonym row needs its dataset (pseudonyms differ per dataset)"
                )
            entries.append(ConsentEntry(dataset, row["pseudonym"], status, source))
        elif row.get("patient_id"):
            key = patient_key(row["patient_id"], row.get("issuer", ""))
            for name in [dataset] if dataset else datasets:
                if name not in keys:
                    keys[name] = DatasetKeys(load_or_create_dataset_secret(keys_dir, name))
                entries.append(ConsentEntry(name, keys[name].pseudonym(key), status, source))
        else:
            raise ConsentImportError(f"{where}: give a pseudonym (with dataset) or a patient_id")
    return entries


def dataset_names(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.execute(select(DatasetRecord.name).order_by(DatasetRecord.name)).scalars())


def store_entries(
    sessions: sessionmaker[Session], entries: Iterable[ConsentEntry], actor: str
) -> ImportResult:
    """Upsert every entry in one transaction: all or nothing."""
    latest: dict[tuple[str, str], ConsentEntry] = {}
    for entry in entries:
        latest[(entry.dataset, entry.pseudonym)] = entry  # a later row for the same patient wins
    now = utc_now_text()
    with transaction(sessions) as session:
        existing = {
            (row.dataset, row.pseudonym): row
            for dataset in {key[0] for key in latest}
            for row in session.execute(
                select(ConsentRecord).where(ConsentRecord.dataset == dataset)
            ).scalars()
        }
        for key, entry in latest.items():
            row = existing.get(key)
            if row is None:
                session.add(
                    ConsentRecord(
                        dataset=entry.dataset,
                        pseudonym=entry.pseudonym,
                        status=entry.status,
                        source=entry.source[:200],
                        recorded_at=now,
                        recorded_by=actor[:200],
                    )
                )
            else:
                row.status, row.source, row.recorded_at, row.recorded_by = (
                    entry.status,
                    entry.source[:200],
                    now,
                    actor[:200],
                )
    by_status: dict[str, int] = {}
    for entry in latest.values():
        by_status[entry.status] = by_status.get(entry.status, 0) + 1
    return ImportResult(len(latest), tuple(sorted({key[0] for key in latest})), by_status)


def list_entries(
    sessions: sessionmaker[Session], dataset: str | None = None, status: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    query = select(ConsentRecord).order_by(ConsentRecord.dataset, ConsentRecord.pseudonym).limit(limit)
    if dataset:
        query = query.where(ConsentRecord.dataset == dataset)
    if status:
        query = query.where(ConsentRecord.status == status)
    with sessions() as session:
        return [
            {
                "dataset": row.dataset,
                "pseudonym": row.pseudonym,
                "status": row.status,
                "source": row.source,
                "recorded_at": row.recorded_at,
                "recorded_by": row.recorded_by,
            }
            for row in session.execute(query).scalars()
        ]


def status_counts(sessions: sessionmaker[Session]) -> dict[str, dict[str, int]]:
    """{dataset: {status: n}} over the whole registry."""
    counts: dict[str, dict[str, int]] = {}
    with sessions() as session:
        rows = session.execute(
            select(ConsentRecord.dataset, ConsentRecord.status, func.count()).group_by(
                ConsentRecord.dataset, ConsentRecord.status
            )
        )
        for dataset, status, count in rows:
            counts.setdefault(dataset, {})[status] = count
    return counts


@dataclass(frozen=True)
class CohortSplit:
    dataset: str
    included: tuple[str, ...]  # pseudonyms, sorted (empty when only counted)
    included_count: int
    excluded: int
    condition: str | None  # the SQL condition the policy compiled to (None: nobody)


def _patients_subquery() -> str:
    # One row per patient of the dataset with their consent status ("none" without a record):
    # the table `patients` the Rego consent policy's `include` rule is written against.
    return (
        "SELECT s.patient_pseudonym AS pseudonym, MIN(COALESCE(c.status, 'none')) AS consent_status "
        "FROM dataset_studies s LEFT JOIN consent_records c "
        "ON c.dataset = s.dataset AND c.pseudonym = s.patient_pseudonym "
        "WHERE s.dataset = :dataset GROUP BY s.patient_pseudonym"
    )


def _counts_by_status() -> str:
    # Patients of the dataset counted per consent status: those with a registry entry by status
    # (an index lookup per entry), everyone else as "none". The policy's condition sees the same
    # `patients.consent_status` column as in the per-patient query, so both agree.
    return (
        "WITH recorded AS (SELECT c.status AS consent_status, COUNT(*) AS n FROM consent_records c "
        "WHERE c.dataset = :dataset AND EXISTS (SELECT 1 FROM dataset_studies s "
        "WHERE s.dataset = :dataset AND s.patient_pseudonym = c.pseudonym) GROUP BY c.status) "
        "SELECT consent_status, n FROM recorded UNION ALL "
        "SELECT 'none', (SELECT COUNT(DISTINCT patient_pseudonym) FROM dataset_studies "
        "WHERE dataset = :dataset) - (SELECT COALESCE(SUM(n), 0) FROM recorded)"
    )


def split_cohort(
    engine: Engine, dataset: str, condition: str | None, count_only: bool = False
) -> CohortSplit:
    """Apply a compiled `include` condition to every patient of `dataset` in one query.

    With `count_only` the database only counts, per consent status (what a decision needs);
    otherwise it also returns the included pseudonyms (what a job needs).
    """
    # The condition is OPA's SQL, quoted by OPA; colons are escaped so that SQLAlchemy does not
    # read them as bind parameters. Used as a boolean column, one pass gives both sides.
    flag = "1 = 0" if condition is None else condition.replace(":", "\\:") if condition else "1 = 1"
    included_flag = f"CASE WHEN {flag} THEN 1 ELSE 0 END"
    # Only constant text and OPA's condition (quoted by OPA) are joined: no value from a caller.
    if count_only:
        query = f"SELECT patients.n, {included_flag} FROM ({_counts_by_status()}) AS patients"  # noqa: S608
    else:
        query = f"SELECT patients.pseudonym, {included_flag} FROM ({_patients_subquery()}) AS patients"  # noqa: S608
    statement = text(query).bindparams(bindparam("dataset", dataset))
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    if count_only:
        count = sum(int(n) for n, flagged in rows if flagged)
        return CohortSplit(dataset, (), count, sum(int(n) for n, _ in rows) - count, condition)
    included = tuple(sorted(pseudonym for pseudonym, flagged in rows if flagged))
    return CohortSplit(dataset, included, len(included), len(rows) - len(included), condition)
