"""The consent and opt-out registry, and the cohort filter that applies it.

Entries are keyed by (dataset, pseudonym): a hospital identifier given on import is turned into
each dataset's pseudonym with that dataset's secret and never stored. The latest entry for a
patient wins. Every import is matched against the datasets' patients (`match_entries`), so a row
that names nobody is reported, never silently stored as if it had excluded someone; a file that is
not what it should be (no header row, unknown columns, empty ids, unknown statuses) imports nothing
and names the row. Which statuses exclude a patient is not decided here: the Rego consent policy's
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
from connector.datasets.models import DatasetRecord, StudyRecord
from connector.datasets.refusals import refused_among, remember
from connector.db.engine import transaction
from connector.deid.keys import DatasetKeys, patient_key
from connector.policy.models import ConsentRecord

STATUSES = ("opted-out", "withdrawn", "consented")
# The columns (CSV header) or keys (JSON objects) an import may use: `status` and either
# `patient_id` (optional `issuer`, optional `dataset`) or `dataset` + `pseudonym`.
COLUMNS = ("patient_id", "issuer", "dataset", "pseudonym", "status")
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
    row: int = 0  # where it came from in the file (a CSV's line number; a JSON list's index)


@dataclass(frozen=True)
class DatasetMatch:
    """What one row's patient is in one dataset."""

    dataset: str
    pseudonym: str
    studies: int  # studies of the patient in the dataset now
    erased: bool  # refused since an earlier shred or erasure: nothing left, and that is no miss


@dataclass(frozen=True)
class RowMatch:
    """One import row and the patients it matched (an unmatched row excludes nobody)."""

    row: int
    status: str
    datasets: tuple[DatasetMatch, ...]

    @property
    def matched(self) -> bool:
        return any(match.studies or match.erased for match in self.datasets)

    @property
    def studies(self) -> int:
        return sum(match.studies for match in self.datasets)

    def to_json(self) -> dict[str, Any]:
        # Pseudonyms only where the row matched: a row that names nobody discloses nothing.
        return {
            "row": self.row,
            "status": self.status,
            "matched": self.matched,
            "studies": self.studies,
            "datasets": [
                {
                    "dataset": match.dataset,
                    "pseudonym": match.pseudonym,
                    "studies": match.studies,
                    "erased": match.erased,
                }
                for match in self.datasets
                if match.studies or match.erased
            ],
        }


@dataclass(frozen=True)
class ImportResult:
    entries: int
    datasets: tuple[str, ...]
    by_status: dict[str, int]


def first_row_of(path: Path) -> int:
    """How rows of the file are numbered in messages: JSON by list index, CSV by line (header is 1)."""
    return 0 if path.suffix.lower() == ".json" else 2


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
    return rows_from_csv(raw)


def rows_from_csv(raw: str) -> list[dict[str, str]]:
    """Rows of a CSV whose first line names its columns; ConsentImportError otherwise."""
    reader = csv.DictReader(io.StringIO(raw))
    try:
        header = [name.strip().lower() for name in reader.fieldnames or []]
    except csv.Error as exc:
        raise ConsentImportError(f"row 1: not CSV ({exc})") from None
    if not header:
        raise ConsentImportError("the file is empty: nothing imported")
    if not set(header) & set(COLUMNS):
        # The classic mistake: a list of ids and statuses without its header line.
        raise ConsentImportError(
            f"row 1: no header row; the first line must name the columns ({', '.join(COLUMNS)})"
        )
    reader.fieldnames = header
    rows = []
    try:
        for number, row in enumerate(reader, start=2):
            if None in row:
                raise ConsentImportError(f"row {number}: more fields than the header names")
            rows.append({key: (value or "").strip() for key, value in row.items()})
    except csv.Error as exc:
        raise ConsentImportError(f"row {reader.line_num}: not CSV ({exc})") from None
    return rows


def rows_from_json(document: Any) -> list[dict[str, str]]:
    """Rows from a JSON list of objects (a file or an API body); ConsentImportError otherwise."""
    if not isinstance(document, list) or not all(isinstance(item, dict) for item in document):
        raise ConsentImportError("a JSON import is a list of objects")
    return [{str(k): "" if v is None else str(v) for k, v in item.items()} for item in document]


def parse_entries(
    rows: Sequence[dict[str, str]],
    datasets: Sequence[str],
    keys_dir: Path,
    source: str,
    default_issuer: str = "",
    first_row: int = 2,
) -> list[ConsentEntry]:
    """Entries from rows with `status` and either `pseudonym` + `dataset`, or `patient_id`.

    A `patient_id` row (optionally with `issuer` and `dataset`) applies to the named dataset or to
    every dataset here; without an issuer, `default_issuer` (the setting
    `default_patient_id_issuer`) qualifies it, as the PACS does. The identifier is turned into
    pseudonyms and dropped. Rows are numbered from `first_row` in messages.
    """
    if len(rows) > MAX_IMPORT_ROWS:
        raise ConsentImportError(f"more than {MAX_IMPORT_ROWS} rows; split the file")
    if not rows:
        raise ConsentImportError("no rows: nothing to import")
    keys: dict[str, DatasetKeys] = {}
    entries = []
    for number, row in enumerate(rows, start=first_row):
        where = f"row {number}"
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ConsentImportError(
                f"{where}: unknown column {unknown[0][:40]!r} (the columns are {', '.join(COLUMNS)})"
            )
        status = row.get("status", "").strip().lower()
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
        pseudonym, patient_id = row.get("pseudonym", "").strip(), row.get("patient_id", "").strip()
        if pseudonym and patient_id:
            raise ConsentImportError(f"{where}: give a pseudonym or a patient_id, not both")
        if pseudonym:
            if not dataset:
                raise ConsentImportError(
                    f"{where}: a pseudonym row needs its dataset (pseudonyms differ per dataset)"
                )
            entries.append(ConsentEntry(dataset, pseudonym, status, source, number))
        elif patient_id:
            issuer = row.get("issuer", "").strip() or default_issuer
            key = patient_key(patient_id, issuer)
            for name in [dataset] if dataset else datasets:
                if name not in keys:
                    keys[name] = DatasetKeys(load_or_create_dataset_secret(keys_dir, name))
                entries.append(ConsentEntry(name, keys[name].pseudonym(key), status, source, number))
            if not dataset and not datasets:
                # No dataset yet: the row is kept (unmatched) so that the report names it.
                entries.append(ConsentEntry("", "", status, source, number))
        elif "patient_id" in row or "pseudonym" in row:
            raise ConsentImportError(f"{where}: empty patient_id (or pseudonym): every row names one patient")
        else:
            raise ConsentImportError(f"{where}: give a pseudonym (with dataset) or a patient_id")
    return entries


def match_entries(sessions: sessionmaker[Session], entries: Sequence[ConsentEntry]) -> list[RowMatch]:
    """Per row: the studies its patient has in each dataset (and whether they were erased before)."""
    wanted: dict[str, set[str]] = {}
    for entry in entries:
        if entry.dataset:
            wanted.setdefault(entry.dataset, set()).add(entry.pseudonym)
    studies: dict[tuple[str, str], int] = {}
    erased: set[tuple[str, str]] = set()
    with sessions() as session:
        for dataset, pseudonyms in wanted.items():
            ordered = sorted(pseudonyms)
            for start in range(0, len(ordered), 500):  # bounded bind parameters per query
                counted = session.execute(
                    select(StudyRecord.patient_pseudonym, func.count())
                    .where(
                        StudyRecord.dataset == dataset,
                        StudyRecord.patient_pseudonym.in_(ordered[start : start + 500]),
                    )
                    .group_by(StudyRecord.patient_pseudonym)
                )
                studies.update(((dataset, pseudonym), int(n)) for pseudonym, n in counted)
            erased.update((dataset, pseudonym) for pseudonym in refused_among(session, dataset, ordered))
    rows: dict[int, list[DatasetMatch]] = {}
    statuses: dict[int, str] = {}
    for entry in entries:
        statuses[entry.row] = entry.status
        found = rows.setdefault(entry.row, [])
        if entry.dataset:
            key = (entry.dataset, entry.pseudonym)
            found.append(DatasetMatch(entry.dataset, entry.pseudonym, studies.get(key, 0), key in erased))
    return [RowMatch(row, statuses[row], tuple(found)) for row, found in rows.items()]


def dataset_names(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.execute(select(DatasetRecord.name).order_by(DatasetRecord.name)).scalars())


def latest_entries(entries: Iterable[ConsentEntry]) -> dict[tuple[str, str], ConsentEntry]:
    """One entry per (dataset, pseudonym): a later row for the same patient wins."""
    latest: dict[tuple[str, str], ConsentEntry] = {}
    for entry in entries:
        if entry.dataset:  # a row kept only to be reported (no dataset yet) stores nothing
            latest[(entry.dataset, entry.pseudonym)] = entry
    return latest


def store_entries(
    sessions: sessionmaker[Session],
    entries: Iterable[ConsentEntry],
    actor: str,
    refuse: Sequence[ConsentEntry] = (),
) -> ImportResult:
    """Upsert every entry in one transaction: all or nothing.

    The patients of `refuse` (to be erased) are remembered as refused by their datasets in the same
    transaction, before anything of them is shredded: from then on no ingest re-admits them.
    """
    latest = latest_entries(entries)
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
        for entry in refuse:
            remember(session, entry.dataset, [entry.pseudonym], f"erased after {entry.status}", actor)
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
