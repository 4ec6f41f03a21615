"""Opt-outs and erasure as a DPO uses them: a row that matches nobody is never silently "done",
and a crypto-shredded patient stays out of every later ingest until a DPO readmits them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from connector.cli import app
from connector.crypto.dataset_secrets import load_or_create_dataset_secret
from connector.datasets.ingest import ingest
from connector.datasets.models import ObjectRecord, StudyRecord
from connector.datasets.refusals import list_refusals, readmit
from connector.datasets.shred import shred
from connector.deid.keys import DatasetKeys, patient_key
from connector.deid.options import DEFAULT_OPTIONS
from connector.identity.roles import Role
from connector.policy.consent import ConsentImportError, list_entries, read_rows
from connector.policy.optout import UnmatchedRows, import_consent
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort
from tests.conftest import bearer
from tests.policy_fixtures import add_dataset

DATASET = "lung-screening"
UNKNOWN_ID = "ES000000001"  # nobody of the synthetic cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    generate_cohort(folder, 2, seed=5)
    return folder


def hospital_id(cohort: Path) -> tuple[str, str]:
    """(PatientID, IssuerOfPatientID) of one synthetic patient, as the hospital's registry knows them."""
    header = pydicom.dcmread(sorted(cohort.rglob("*.dcm"))[0], stop_before_pixels=True)
    return str(header.PatientID), str(header.IssuerOfPatientID)


@pytest.fixture
def runtime(database_url: str, tmp_path: Path, cohort: Path) -> Iterator[Runtime]:
    # The hospital's own ids carry its issuer: configured once, a natural CSV needs no issuer column.
    _, issuer = hospital_id(cohort)
    built = build_runtime(
        load_settings(
            data_dir=tmp_path / "data", database_url=database_url, default_patient_id_issuer=issuer
        )
    )
    yield built
    built.close()


def pseudonym_of(runtime: Runtime, cohort: Path) -> str:
    patient_id, issuer = hospital_id(cohort)
    keys = DatasetKeys(load_or_create_dataset_secret(runtime.settings.keys_dir, DATASET))
    return keys.pseudonym(patient_key(patient_id, issuer))


def patients(runtime: Runtime) -> set[str]:
    with runtime.sessions() as session:
        return set(
            session.execute(
                select(StudyRecord.patient_pseudonym).where(StudyRecord.dataset == DATASET)
            ).scalars()
        )


def objects(runtime: Runtime) -> int:
    with runtime.sessions() as session:
        return int(session.execute(select(func.count()).select_from(ObjectRecord)).scalar_one())


def test_a_natural_csv_of_hospital_ids_matches_and_excludes_the_patient(
    runtime: Runtime, cohort: Path, tmp_path: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    patient_id, _ = hospital_id(cohort)
    victim = pseudonym_of(runtime, cohort)
    csv = tmp_path / "optouts.csv"
    csv.write_text(f"patient_id,status\n{patient_id},opted-out\n{UNKNOWN_ID},opted-out\n")

    outcome = import_consent(runtime, read_rows(csv), csv.name, "dpo-dora")

    first, second = outcome.rows
    assert (first.row, first.matched, first.studies) == (2, True, 5)
    assert [match.pseudonym for match in first.datasets] == [victim]
    assert (second.row, second.matched) == (3, False)  # listed, never reported as done
    assert [row.row for row in outcome.unmatched] == [3]
    report = outcome.to_json()
    assert report["unmatched_rows"] == [3] and report["rows"][1]["datasets"] == []
    split = runtime.policy.cohort(DATASET)
    assert victim not in split.included and split.excluded == 1 and len(split.included) == 1
    # The hospital id is stored nowhere: only the dataset's pseudonym.
    assert patient_id not in json.dumps(list_entries(runtime.sessions))


def test_a_strict_erasure_with_an_unmatched_row_changes_nothing(runtime: Runtime, cohort: Path) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    patient_id, _ = hospital_id(cohort)
    rows = [
        {"patient_id": patient_id, "status": "opted-out"},
        {"patient_id": UNKNOWN_ID, "status": "withdrawn"},
    ]
    stored_before = objects(runtime)

    with pytest.raises(UnmatchedRows, match="1 row\\(s\\) match no patient") as raised:
        import_consent(runtime, rows, "optouts.csv", "dpo-dora", erase=True)

    assert [row.row for row in raised.value.rows if not row.matched] == [3]
    assert list_entries(runtime.sessions) == []
    assert list_refusals(runtime.sessions) == []
    assert len(patients(runtime)) == 2 and objects(runtime) == stored_before
    assert runtime.audit.query(action="consent.import")[-1].outcome == "failure"
    # --no-strict stores both rows, shreds the one it matched, and still lists the other.
    outcome = import_consent(runtime, rows, "optouts.csv", "dpo-dora", erase=True, strict=False)
    assert [row.row for row in outcome.unmatched] == [3]
    assert [(dataset, studies) for dataset, _, studies in outcome.shredded] == [(DATASET, 5)]
    assert len(patients(runtime)) == 1


def test_reingesting_after_a_shred_keeps_the_patient_out_until_readmitted(
    runtime: Runtime, cohort: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    victim = pseudonym_of(runtime, cohort)
    shred(runtime, DATASET, patient=victim, actor="steward")
    assert patients(runtime) == {p for p in patients(runtime) if p != victim} and len(patients(runtime)) == 1
    stored_before = objects(runtime)

    again = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)  # "re-runs are safe"

    assert len(patients(runtime)) == 1 and victim not in patients(runtime)
    assert (again.refused_patients, again.refused, again.stored) == (1, 30, 0)
    assert again.deid.quarantined == 0 and again.studies == 5 and objects(runtime) == stored_before
    kept = json.loads(again.deid.report_path.read_text())
    assert victim not in json.dumps(kept["studies"])
    [refusal] = list_refusals(runtime.sessions, DATASET)
    assert (refusal.pseudonym, refusal.reason, refusal.recorded_by) == (victim, "shredded", "steward")

    with pytest.raises(ValueError, match="reason"):
        readmit(runtime, DATASET, victim, "  ", "dpo-dora")
    readmit(runtime, DATASET, victim, "erasure request withdrawn (ticket 42)", "dpo-dora")
    assert runtime.audit.query(action="dataset.readmit")[-1].actor == "dpo-dora"
    back = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    assert back.refused == 0 and back.stored == 30 and victim in patients(runtime) and back.studies == 10
    with pytest.raises(LookupError):
        readmit(runtime, DATASET, victim, "twice", "dpo-dora")


def test_a_patient_erased_while_an_ingest_runs_is_not_indexed(runtime: Runtime, cohort: Path) -> None:
    patient_id, _ = hospital_id(cohort)
    victim = pseudonym_of(runtime, cohort)
    erased: list[object] = []

    def dpo_erases_meanwhile(_: int) -> None:
        # The first instance is de-identified, none is indexed yet: the DPO's erasure arrives now.
        if not erased:
            optout = [{"patient_id": patient_id, "status": "withdrawn"}]
            erased.append(import_consent(runtime, optout, "register", "dpo", erase=True, strict=False))

    summary = ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS, progress=dpo_erases_meanwhile)

    assert erased and victim not in patients(runtime) and len(patients(runtime)) == 1
    assert (summary.refused_patients, summary.refused, summary.stored) == (1, 30, 30)
    assert objects(runtime) == 30 and summary.studies == 5
    # Nothing of the erased patient is left in the store, staged or published: only the 30 indexed.
    on_disk = [path for path in runtime.settings.effective_objects_dir.rglob("*") if path.is_file()]
    assert len(on_disk) == 30


def test_an_erasure_is_remembered_and_a_whole_dataset_shred_forgets_with_its_secret(
    runtime: Runtime, cohort: Path
) -> None:
    ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS)
    patient_id, _ = hospital_id(cohort)
    victim = pseudonym_of(runtime, cohort)
    optout = [{"patient_id": patient_id, "status": "opted-out"}]
    import_consent(runtime, optout, "register", "dpo", erase=True)
    assert [row.reason for row in list_refusals(runtime.sessions)] == ["erased after opted-out"]
    assert ingest(runtime, cohort, DATASET, DEFAULT_OPTIONS).refused_patients == 1
    assert victim not in patients(runtime)
    # A second import of the same opt-out matches the erased patient: no false "unmatched".
    outcome = import_consent(runtime, optout, "register", "dpo", erase=True)
    assert outcome.rows[0].matched and outcome.rows[0].datasets[0].erased
    # A whole-dataset shred destroys the pseudonym secret: the name, reused, is a new dataset.
    shred(runtime, DATASET)
    assert list_refusals(runtime.sessions) == []


def _cli(tmp_path: Path, *args: str, issuer: str = "") -> tuple[int, str]:
    env = {
        "CONNECTOR_DATA_DIR": str(tmp_path / "data"),
        "CONNECTOR_DEFAULT_PATIENT_ID_ISSUER": issuer,
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("ES512860772,opted-out\n", "row 1: no header row"),
        ("patient_id,status,name\nES512860772,opted-out,Doe\n", "row 2: unknown column 'name'"),
        ("patient_id,status\n,opted-out\n", "row 2: empty patient_id"),
        ("patient_id,status\nES512860772,opt-out\n", "row 2: status 'opt-out' is not one of"),
        ("patient_id,status\nES512860772,opted-out,extra\n", "row 2: more fields than the header"),
        ("patient_id,status\n", "no rows"),
        ("", "empty"),
    ],
)
def test_a_malformed_file_imports_nothing_and_names_the_row(
    tmp_path: Path, content: str, reason: str
) -> None:
    bad = tmp_path / "optouts.csv"
    bad.write_text(content)
    code, output = _cli(tmp_path, "consent", "import", str(bad))
    assert code == 2 and "nothing imported" in output and reason in " ".join(output.split()), output
    assert "Traceback" not in output
    code, output = _cli(tmp_path, "consent", "list", "--json")
    assert json.loads(output) == []


def test_the_cli_reports_every_row_and_an_ingest_refuses_the_shredded_patient(
    tmp_path: Path, cohort: Path
) -> None:
    patient_id, issuer = hospital_id(cohort)
    code, output = _cli(tmp_path, "ingest", str(cohort), "--dataset", DATASET)
    assert code == 0, output
    optouts = tmp_path / "optouts.csv"
    optouts.write_text(f"patient_id,status\n{patient_id},opted-out\n{UNKNOWN_ID},opted-out\n")

    code, output = _cli(tmp_path, "consent", "import", str(optouts), "--erase", issuer=issuer)
    assert code == 1 and "nothing imported" in output and "row 3: opted-out: matches no patient" in output
    code, output = _cli(tmp_path, "consent", "list", "--json")
    assert json.loads(output) == []

    code, output = _cli(tmp_path, "consent", "import", str(optouts), "--erase", "--no-strict", issuer=issuer)
    assert code == 0, output
    assert "row 2: opted-out: matched lung-screening PSN-" in output and "(5 studies)" in output
    assert "row 3: opted-out: matches NO patient" in output and "1 row(s) matched no patient" in output
    assert "shredded 5 studies" in output
    victim = output.split("matched lung-screening ")[1].split()[0]

    code, output = _cli(tmp_path, "ingest", str(cohort), "--dataset", DATASET)
    assert code == 0 and "refused: patient was erased: 1 patient(s), 30 objects" in output, output
    assert patient_id not in output
    shown = json.loads(_cli(tmp_path, "datasets", "show", DATASET, "--json")[1])
    assert shown["patients"] == 1
    code, output = _cli(tmp_path, "consent", "refused", "--json")
    # The unmatched row was erased too (--no-strict): should that patient arrive, they are refused.
    assert code == 0 and victim in [row["pseudonym"] for row in json.loads(output)]
    assert len(json.loads(output)) == 2
    lift = ("--dataset", DATASET, "--patient", victim, "--reason", "ticket 42")
    code, output = _cli(tmp_path, "consent", "readmit", *lift)
    assert code == 0, output
    code, output = _cli(tmp_path, "ingest", str(cohort), "--dataset", DATASET)
    assert code == 0 and "refused" not in output
    assert json.loads(_cli(tmp_path, "datasets", "show", DATASET, "--json")[1])["patients"] == 2


def test_the_api_answers_the_per_row_report_and_422(tmp_path: Path) -> None:
    from connector.api.app import create_app

    runtime = build_runtime(load_settings(data_dir=tmp_path / "data"))
    try:
        add_dataset(runtime, "demo-cohort", ["PSN-A", "PSN-B"])
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            assert runtime.dev_issuer is not None
            dpo = bearer(runtime.dev_issuer.issue("dora", [Role.DPO]))
            known = {"dataset": "demo-cohort", "pseudonym": "PSN-A", "status": "opted-out"}
            unknown = {"dataset": "demo-cohort", "pseudonym": "PSN-Z", "status": "opted-out"}
            strict = client.post(
                "/v1/consent/import", json={"entries": [known, unknown], "strict": True}, headers=dpo
            )
            assert strict.status_code == 422 and strict.json()["error"] == "consent_rows_unmatched"
            assert strict.json()["unmatched_rows"] == [1]
            assert client.get("/v1/consent", headers=dpo).json() == []
            done = client.post("/v1/consent/import", json={"entries": [known, unknown]}, headers=dpo)
            assert done.status_code == 200, done.text
            body = done.json()
            assert body["unmatched_rows"] == [1] and body["rows"][0]["matched"] is True
            assert body["rows"][0]["datasets"] == [
                {"dataset": "demo-cohort", "pseudonym": "PSN-A", "studies": 1, "erased": False}
            ]
            bad = client.post("/v1/consent/import", json={"entries": [{"patient": "x"}]}, headers=dpo)
            assert bad.status_code == 422 and bad.json()["error"] == "invalid_consent_import"
            assert "row 0: unknown column 'patient'" in bad.json()["detail"]
            lift = {"dataset": "demo-cohort", "pseudonym": "PSN-A", "reason": "why not"}
            assert client.post("/v1/consent/readmit", json=lift, headers=dpo).status_code == 404
    finally:
        runtime.close()


def test_the_import_is_all_or_nothing_for_the_domain_too(runtime: Runtime) -> None:
    add_dataset(runtime, "demo-cohort", ["PSN-A"])
    with pytest.raises(ConsentImportError, match="row 3: status"):
        import_consent(
            runtime,
            [
                {"dataset": "demo-cohort", "pseudonym": "PSN-A", "status": "opted-out"},
                {"dataset": "demo-cohort", "pseudonym": "PSN-A", "status": "later"},
            ],
            "x.csv",
            "dpo",
        )
    assert list_entries(runtime.sessions) == []
