"""Importing consent and opt-out decisions, with optional erasure by crypto-shredding.

One function for the CLI and the API: read the file, store every entry (all or nothing), audit
the import, and with `erase` shred the studies of every opted-out or withdrawn patient (EHDS
art. 71 opt-out; GDPR art. 17 erasure). The cohort filter applies the registry from the next
decision on, so running and future jobs stop seeing those patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from connector.policy.consent import ImportResult, dataset_names, parse_entries, store_entries

if TYPE_CHECKING:
    from connector.runtime import Runtime

EXCLUDING = ("opted-out", "withdrawn")


@dataclass(frozen=True)
class ConsentImport:
    result: ImportResult
    shredded: tuple[tuple[str, str, int], ...]  # (dataset, pseudonym, studies)

    def to_json(self) -> dict[str, object]:
        return {
            "entries": self.result.entries,
            "datasets": list(self.result.datasets),
            "by_status": self.result.by_status,
            "shredded": [
                {"dataset": dataset, "pseudonym": pseudonym, "studies": studies}
                for dataset, pseudonym, studies in self.shredded
            ],
        }


def import_consent(
    runtime: Runtime, rows: list[dict[str, str]], source: str, actor: str, erase: bool = False
) -> ConsentImport:
    """Store the rows' entries; ConsentImportError (nothing stored) when any row is wrong."""
    from connector.datasets.shred import shred

    entries = parse_entries(rows, dataset_names(runtime.sessions), runtime.settings.keys_dir, source)
    result = store_entries(runtime.sessions, entries, actor)
    runtime.audit.record(
        actor,
        "consent.import",
        source[:200],
        "success",
        reasons=[f"{result.entries} entries"],
        details={"by_status": result.by_status, "datasets": list(result.datasets), "erase": erase},
    )
    shredded = []
    if erase:
        for entry in entries:
            if entry.status not in EXCLUDING:
                continue
            try:
                done = shred(runtime, entry.dataset, patient=entry.pseudonym)
            except LookupError:
                continue  # nothing of this patient is stored in that dataset
            shredded.append((entry.dataset, entry.pseudonym, done.studies))
            runtime.audit.record(
                actor,
                "dataset.shred",
                entry.dataset,
                "success",
                reasons=[f"erasure after {entry.status}"],
                details={"patient": entry.pseudonym, "studies": done.studies, "new_key_id": done.new_key_id},
            )
    # Opt-outs and erasures change who is counted: public catalog records follow at once.
    from connector.cataloging.service import refresh_after_change

    for dataset in result.datasets:
        refresh_after_change(runtime, dataset, actor)
    return ConsentImport(result, tuple(shredded))
