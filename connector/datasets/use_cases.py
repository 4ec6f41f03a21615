"""The steward's and the DPO's use cases, each ending in its domain: work, audit entry, catalog refresh.

Ingest, export, shred and key rotation are one function each here. Each does the work (through
`connector.datasets.ingest`, `export`, `shred`), records the one audit entry that says it happened
(and, for an export, the one that says it failed) under the actor passed in, and refreshes the
dataset's public catalog record where the data changed. The CLI, the demo and the consent import
call these and only translate the outcome (print, exit code); none of them writes these entries
or refreshes the catalog by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from connector.crypto.keystore import KeyStoreError
from connector.datasets.export import UnknownDataset, export_dataset
from connector.datasets.ingest import IngestSummary, ingest
from connector.datasets.shred import ShredResult, rotate_dataset_key, shred
from connector.datasets.vault import ObjectIntegrityError
from connector.storage.objects import ObjectStoreError

if TYPE_CHECKING:
    from catalog.publish import PublishOutcome
    from connector.runtime import Runtime

#: The errors an export reports as a failed `dataset.export` entry before raising them on.
EXPORT_ERRORS = (UnknownDataset, ObjectIntegrityError, ObjectStoreError, KeyStoreError)


@dataclass(frozen=True)
class Ingested:
    summary: IngestSummary
    catalog: tuple[PublishOutcome, ...]  # the public record's refresh, here and at each remote


@dataclass(frozen=True)
class Shredded:
    result: ShredResult
    catalog: tuple[PublishOutcome, ...]


def refresh_catalog(runtime: Runtime, dataset: str, actor: str) -> tuple[PublishOutcome, ...]:
    """After data changed: the dataset's public record (and its remote copies) follow; never raises."""
    from connector.cataloging.service import refresh_after_change  # rdflib and pyshacl: only when used

    return refresh_after_change(runtime, dataset, actor)


def ingest_dataset(
    runtime: Runtime,
    in_dir: Path,
    dataset: str,
    options: tuple[str, ...],
    *,
    actor: str,
    roles: Iterable[str] = (),
    quarantine_dir: Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Ingested:
    """Ingest a folder into the dataset, audit `dataset.ingest`, refresh the catalog record."""
    summary = ingest(runtime, in_dir, dataset, options, quarantine_dir, workers, progress, on_total)
    runtime.audit.record(
        actor,
        "dataset.ingest",
        dataset,
        "success",
        details={
            "stored": summary.stored,
            "already_stored": summary.already_stored,
            "refused_erased": summary.refused,
            "quarantined": summary.deid.quarantined,
            "run_id": summary.deid.report["run_id"],
        },
        roles=roles,
    )
    return Ingested(summary, refresh_catalog(runtime, dataset, actor))


def export_dataset_audited(
    runtime: Runtime,
    dataset: str,
    out_dir: Path,
    *,
    actor: str,
    roles: Iterable[str] = (),
    progress: Callable[[int], None] | None = None,
) -> int:
    """Decrypt the dataset into `out_dir` and audit `dataset.export`: a failure (one of
    EXPORT_ERRORS) is audited as one too, then raised on. Returns the objects written."""
    roles = tuple(roles)
    try:
        count = export_dataset(runtime, dataset, out_dir, progress=progress)
    except EXPORT_ERRORS as exc:
        runtime.audit.record(
            actor, "dataset.export", dataset, "failure", reasons=[str(exc)[:300]], roles=roles
        )
        raise
    runtime.audit.record(actor, "dataset.export", dataset, "success", details={"objects": count}, roles=roles)
    return count


def shred_target(patient: str | None, study: str | None) -> str:
    """How a shred's target is named to people and in its audit entry."""
    return f"patient {patient}" if patient else f"study {study}" if study else "the WHOLE dataset"


def shred_dataset(
    runtime: Runtime,
    dataset: str,
    *,
    actor: str,
    patient: str | None = None,
    study: str | None = None,
    roles: Iterable[str] = (),
    reason: str = "shredded",
    audit_reason: str | None = None,
    audit_details: dict[str, object] | None = None,
    refresh: bool = True,
) -> Shredded:
    """Crypto-shred a patient, a study or (with neither) the whole dataset, audit `dataset.shred`
    (reason: `audit_reason`, by default "shredded <target>"; `audit_details` added to the counts),
    and refresh the catalog record (`refresh=False` for a caller that refreshes once for many).

    `reason` is kept with a shredded patient's refusal (`connector.datasets.refusals`). LookupError
    when there is no such dataset or nothing to shred; KeyStoreError from the key store.
    """
    result = shred(runtime, dataset, patient=patient, study=study, actor=actor, reason=reason)
    runtime.audit.record(
        actor,
        "dataset.shred",
        dataset,
        "success",
        reasons=[audit_reason or f"shredded {shred_target(patient, study)}"],
        details={
            **(audit_details or {}),
            "studies": result.studies,
            "objects": result.objects,
            "new_key_id": result.new_key_id,
        },
        roles=roles,
    )
    return Shredded(result, refresh_catalog(runtime, dataset, actor) if refresh else ())


def rotate_key(runtime: Runtime, dataset: str, *, actor: str, roles: Iterable[str] = ()) -> str:
    """New key-encryption key for the dataset, study keys re-wrapped, older versions retired;
    audited as `keys.rotate`. Returns the new key id (KeyStoreError from the key store)."""
    new_key = rotate_dataset_key(runtime, dataset)
    runtime.audit.record(actor, "keys.rotate", dataset, "success", details={"key_id": new_key}, roles=roles)
    return new_key
