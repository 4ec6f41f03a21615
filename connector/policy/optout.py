"""Importing consent and opt-out decisions, with optional erasure by crypto-shredding.

One function for the CLI and the API: read the rows, match every row against the patients of each
dataset (a per-row report: which datasets, how many studies), store every entry (all or nothing),
audit the import, and with `erase` remember the opted-out or withdrawn patients as refused by
their datasets, then shred their studies (EHDS art. 71 opt-out; GDPR art. 17 erasure). The cohort
filter applies the registry from the next decision on, so running and future jobs stop seeing
those patients; no later ingest re-admits an erased one.

What it must never do: report an import as done while a row excluded nobody without saying so;
with `strict` (the default with `erase`), store or shred anything when a row matches nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from connector.policy.consent import (
    ConsentImportError,
    ImportResult,
    RowMatch,
    dataset_names,
    latest_entries,
    match_entries,
    parse_entries,
    store_entries,
)

if TYPE_CHECKING:
    from connector.runtime import Runtime

EXCLUDING = ("opted-out", "withdrawn")


class UnmatchedRows(ConsentImportError):
    """A strict import named patients that are in no dataset here: nothing was imported."""

    def __init__(self, rows: tuple[RowMatch, ...]) -> None:
        self.rows = rows
        unmatched = [row.row for row in rows if not row.matched]
        listed = ", ".join(str(number) for number in unmatched[:20]) + (" ..." if len(unmatched) > 20 else "")
        super().__init__(
            f"{len(unmatched)} row(s) match no patient in any dataset (rows {listed}); check the issuer "
            "(setting default_patient_id_issuer) and the ids, or import with --no-strict"
        )


@dataclass(frozen=True)
class ConsentImport:
    result: ImportResult
    shredded: tuple[tuple[str, str, int], ...]  # (dataset, pseudonym, studies)
    rows: tuple[RowMatch, ...] = ()
    strict: bool = False

    @property
    def unmatched(self) -> tuple[RowMatch, ...]:
        return tuple(row for row in self.rows if not row.matched)

    def to_json(self) -> dict[str, object]:
        return {
            "entries": self.result.entries,
            "datasets": list(self.result.datasets),
            "by_status": self.result.by_status,
            "strict": self.strict,
            "matched_rows": len(self.rows) - len(self.unmatched),
            "unmatched_rows": [row.row for row in self.unmatched],
            "rows": [row.to_json() for row in self.rows],
            "shredded": [
                {"dataset": dataset, "pseudonym": pseudonym, "studies": studies}
                for dataset, pseudonym, studies in self.shredded
            ],
        }


def import_consent(
    runtime: Runtime,
    rows: list[dict[str, str]],
    source: str,
    actor: str,
    erase: bool = False,
    strict: bool | None = None,
    first_row: int = 2,
) -> ConsentImport:
    """Store the rows' entries; ConsentImportError (nothing stored) when any row is wrong.

    `strict` (default: on with `erase`): UnmatchedRows, and nothing stored or shredded, when a row
    matches no patient. Without it unmatched rows are stored (they apply if the patient arrives
    later) and listed in the report.
    """
    from connector.datasets.use_cases import refresh_catalog, shred_dataset

    strict = erase if strict is None else strict
    entries = parse_entries(
        rows,
        dataset_names(runtime.sessions),
        runtime.settings.keys_dir,
        source,
        runtime.settings.default_patient_id_issuer,
        first_row,
    )
    report = tuple(match_entries(runtime.sessions, entries))
    unmatched = [row.row for row in report if not row.matched]
    if strict and unmatched:
        runtime.audit.record(
            actor,
            "consent.import",
            source[:200],
            "failure",
            reasons=[f"{len(unmatched)} rows match no patient; nothing imported"],
            details={"unmatched_rows": unmatched[:1000], "erase": erase},
        )
        raise UnmatchedRows(report)
    # Only a patient whose latest row excludes them is erased (a later "consented" row wins).
    to_erase = (
        [entry for entry in latest_entries(entries).values() if entry.status in EXCLUDING] if erase else []
    )
    result = store_entries(runtime.sessions, entries, actor, refuse=to_erase)
    runtime.audit.record(
        actor,
        "consent.import",
        source[:200],
        "success",
        reasons=[f"{result.entries} entries", f"{len(unmatched)} rows matched no patient"],
        details={
            "by_status": result.by_status,
            "datasets": list(result.datasets),
            "erase": erase,
            "strict": strict,
            "unmatched_rows": unmatched[:1000],
        },
    )
    shredded = []
    for entry in to_erase:
        try:
            done = shred_dataset(
                runtime,
                entry.dataset,
                actor=actor,
                patient=entry.pseudonym,
                reason=f"erased after {entry.status}",
                audit_reason=f"erasure after {entry.status}",
                audit_details={"patient": entry.pseudonym},
                refresh=False,  # once per dataset below, after every erasure there
            ).result
        except LookupError:
            continue  # nothing of this patient is stored there: they are refused if they arrive
        shredded.append((entry.dataset, entry.pseudonym, done.studies))
    # Opt-outs and erasures change who is counted: public catalog records follow at once.
    for dataset in result.datasets:
        refresh_catalog(runtime, dataset, actor)
    return ConsentImport(result, tuple(shredded), report, strict)
