"""The steward's and the DPO's use cases end in their domain: called directly, without the CLI, each
records its audit entry and refreshes the dataset's public catalog record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog.steward_file import load_steward_fields
from connector.audit.chain import AuditRecord
from connector.cataloging.service import publish_dataset, set_description
from connector.datasets.export import UnknownDataset
from connector.datasets.use_cases import export_dataset_audited, ingest_dataset, rotate_key, shred_dataset
from connector.deid.options import DEFAULT_OPTIONS
from connector.policy.optout import import_consent
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort
from tests.test_catalog_connector import EXAMPLE, add_cohort

DATASET = "lung-screening"
STEWARD = "steward-anna"
DPO = "dpo-bruno"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=5)
    return folder


@pytest.fixture
def runtime(database_url: str, tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(data_dir=tmp_path / "data", database_url=database_url))
    yield built
    built.close()


def entries(runtime: Runtime, action: str) -> list[AuditRecord]:
    return sorted(runtime.audit.query(action=action, limit=1000), key=lambda record: record.seq)


def only(runtime: Runtime, action: str) -> AuditRecord:
    found = entries(runtime, action)
    assert len(found) == 1, found
    return found[0]


def test_each_use_case_records_its_audit_entry(runtime: Runtime, cohort: Path, tmp_path: Path) -> None:
    ingested = ingest_dataset(
        runtime, cohort, DATASET, DEFAULT_OPTIONS, actor=STEWARD, roles=["steward"], workers=1
    )
    summary = ingested.summary
    assert ingested.catalog == ()  # not in the catalog: nothing to refresh
    entry = only(runtime, "dataset.ingest")
    assert (entry.actor, entry.actor_roles, entry.object, entry.outcome) == (
        STEWARD,
        "steward",
        DATASET,
        "success",
    )
    assert json.loads(entry.details) == {
        "stored": summary.stored,
        "already_stored": 0,
        "refused_erased": 0,
        "quarantined": 0,
        "run_id": summary.deid.report["run_id"],
    }

    count = export_dataset_audited(runtime, DATASET, tmp_path / "out", actor=STEWARD)
    assert count == summary.stored == len(list((tmp_path / "out").rglob("*.dcm")))
    exported = only(runtime, "dataset.export")
    assert (exported.actor, exported.outcome, json.loads(exported.details)) == (
        STEWARD,
        "success",
        {"objects": count},
    )
    with pytest.raises(UnknownDataset):
        export_dataset_audited(runtime, "no-such-set", tmp_path / "none", actor=STEWARD)
    failed = entries(runtime, "dataset.export")[-1]
    assert (failed.object, failed.outcome, json.loads(failed.reasons)) == (
        "no-such-set",
        "failure",
        ["no dataset 'no-such-set'"],
    )

    new_key = rotate_key(runtime, DATASET, actor=DPO)
    rotated = only(runtime, "keys.rotate")
    assert (rotated.actor, rotated.object, json.loads(rotated.details)) == (DPO, DATASET, {"key_id": new_key})

    patient = sorted(path.name for path in (tmp_path / "out").iterdir())[0]
    shredded = shred_dataset(runtime, DATASET, actor=DPO, patient=patient)
    entry = only(runtime, "dataset.shred")
    assert (entry.actor, entry.object, json.loads(entry.reasons)) == (
        DPO,
        DATASET,
        [f"shredded patient {patient}"],
    )
    assert json.loads(entry.details) == {
        "studies": shredded.result.studies,
        "objects": shredded.result.objects,
        "new_key_id": shredded.result.new_key_id,
    }
    assert shredded.result.studies > 0 and shredded.catalog == ()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_changes_refresh_the_published_catalog_record(runtime: Runtime, cohort: Path) -> None:
    # A public record over an index of 12 patients (no remote catalogs: the record here is refreshed).
    pseudonyms = add_cohort(runtime, "lung-ct", 12)
    set_description(
        runtime, "lung-ct", load_steward_fields(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE)), STEWARD
    )
    publish_dataset(runtime, "lung-ct", [], STEWARD)

    def versions() -> list[tuple[str, int]]:
        return [(r.actor, json.loads(r.details)["version"]) for r in entries(runtime, "catalog.publish")]

    assert versions() == [(STEWARD, 1)]

    # Two more patients ingested: the record counts them, without anyone asking.
    ingest_dataset(runtime, cohort, "lung-ct", (), actor=STEWARD, workers=1)
    assert versions() == [(STEWARD, 1), (STEWARD, 2)]
    assert only(runtime, "dataset.ingest").seq < entries(runtime, "catalog.publish")[-1].seq

    # A rotation changes no count: no new version.
    rotate_key(runtime, "lung-ct", actor=DPO)
    assert len(versions()) == 2

    shred_dataset(runtime, "lung-ct", actor=DPO, patient=pseudonyms[0])
    assert versions()[-1] == (DPO, 3)

    # The opt-out erasure: its shred entry says why, and the record follows once.
    rows = [{"dataset": "lung-ct", "pseudonym": pseudonyms[1], "status": "opted-out"}]
    outcome = import_consent(runtime, rows, "register", DPO, erase=True)
    assert [(dataset, pseudonym) for dataset, pseudonym, _ in outcome.shredded] == [
        ("lung-ct", pseudonyms[1])
    ]
    erased = entries(runtime, "dataset.shred")[-1]
    assert json.loads(erased.reasons) == ["erasure after opted-out"]
    assert json.loads(erased.details)["patient"] == pseudonyms[1]
    assert versions()[-1] == (DPO, 4)
