"""Issue #14, findings 3, 4 and 6: nothing leaves outside the egress policy, k holds for every
release, and the release channel is bounded.

Each test is the red team's exploit, run end to end with real parts (a signed package, the
sandbox, the policy engine, SQLite and PostgreSQL): a model whose exception carries a secret, a
cohort filter that counts patients the model never sees, a 256-label model at 6 decimals, and
two jobs that together pass the team's budget of released numbers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import select
from torch import nn
from typer.testing import CliRunner

from connector.api.app import create_app
from connector.audit.models import AuditEntry
from connector.cli import app
from connector.client import ConnectorClient
from connector.compute.demo_model import demo_manifest, demo_package, train_demo_model
from connector.compute.manifest import Manifest
from connector.compute.package import build_package
from connector.compute.package_signing import generate_team_key, sign_package
from connector.compute.sandbox import SandboxLimits
from connector.datasets.ingest import ingest
from connector.db.base import Base
from connector.db.engine import make_engine
from connector.db.migrate import upgrade
from connector.deid.options import DEFAULT_OPTIONS
from connector.demo import serving
from connector.identity.roles import Role
from connector.jobs.models import Job, ReleaseBudget
from connector.jobs.results import verify_result
from connector.jobs.runner import Worker
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from connector.synth import generate_cohort

DATASET = "screening-ct"
OTHER_DATASET = "screening-ct-2"
TEAM = "leuven-ai-lab"
OTHER_TEAM = "ghent-ai-lab"
LIMITS = SandboxLimits(threads=1)
SECRET = "H3-SECRET-MARKER-5a9c"


# --- models the red team wrote ----------------------------------------------------------------


class LeakingModel(nn.Module):
    """Raises with a marker and the first pixel values of the study in its message."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("H3-SECRET-MARKER-5a9c pixels=" + str(float(x[0, 0, 0, 0])))


class WideModel(nn.Module):
    """256 'classes' whose logits are the first 256 pixels of the image: a pixel channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)[:, :256] * 10.0


def scripted(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def torchscript_package(
    private_pem: bytes, team: str, module: nn.Module, labels: int = 2, **changes: Any
) -> tuple[bytes, str]:
    document = json.loads(demo_manifest().model_dump_json())
    document.update(framework="torchscript", weights="model.pt", name="red-team-model")
    del document["network"]
    document["output"]["labels"] = [f"class-{index}" for index in range(labels)]
    document.update(changes)
    package = build_package(Manifest.model_validate(document), scripted(module))
    return package, sign_package(package, private_pem, team)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {TEAM: generate_team_key("EdDSA"), OTHER_TEAM: generate_team_key("EdDSA")}


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("egress-cohort")
    generate_cohort(folder, 3, seed=21)
    return folder


@pytest.fixture(scope="module")
def one_dx_patient_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five patients; only one of them has a DX (radiograph) study."""
    folder = tmp_path_factory.mktemp("one-dx")
    generate_cohort(folder, 5, seed=21)
    holders: dict[str, list[Path]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        if dataset.Modality == "DX":
            holders.setdefault(str(dataset.PatientID), []).append(path)
    assert len(holders) >= 2
    for paths in list(holders.values())[1:]:
        for path in paths:
            path.unlink()
    return folder


def activate(runtime: Runtime, datasets: dict[str, dict[str, Any]]) -> None:
    files = dict(PolicyBundle.from_dir(default_policies_dir()).files)
    document = json.loads(files["data.json"])
    document["connector"]["settings"]["datasets"].update(datasets)
    files["data.json"] = json.dumps(document)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo", "egress hardening tests")
    assert outcome.activated, outcome.reasons


@pytest.fixture
def runtime(tmp_path: Path, database_url: str, cohort_dir: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(data_dir=tmp_path / "data", database_url=database_url))
    ingest(built, cohort_dir, DATASET, DEFAULT_OPTIONS)
    activate(built, {DATASET: {"k": 2}})
    yield built
    built.close()


@pytest.fixture
def client(runtime: Runtime, keys: dict[str, tuple[bytes, bytes]]) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        for team, (_, public_pem) in keys.items():
            registered = test_client.post(
                "/v1/teams/keys",
                json={"team": team, "public_key": public_pem.decode()},
                headers=headers(runtime, Role.STEWARD, "anna"),
            )
            assert registered.status_code == 200, registered.text
        yield test_client


def token(runtime: Runtime, role: Role, sub: str = "alice") -> str:
    assert runtime.dev_issuer is not None
    return runtime.dev_issuer.issue(sub, [role], organisation="Uni Leuven AI Lab", country="BE")


def headers(runtime: Runtime, role: Role, sub: str = "alice") -> dict[str, str]:
    return {"authorization": f"Bearer {token(runtime, role, sub)}"}


def submit(
    client: TestClient,
    runtime: Runtime,
    package: tuple[bytes, str],
    dataset: str = DATASET,
    cohort: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    assert runtime.permit_issuer is not None
    permit = runtime.permit_issuer.issue(
        requester="alice",
        organisation="Uni Leuven AI Lab",
        purposes=["ai-development"],
        datasets=[dataset],
        countries=["BE"],
    )
    body = {"dataset": dataset, "purpose": "ai-development", "permit": permit, "cohort": cohort or {}}
    answer = client.post(
        "/v1/jobs",
        data={"job": json.dumps(body), "signature": package[1]},
        files={"package": ("model.zip", package[0], "application/zip")},
        headers=headers(runtime, Role.RESEARCHER),
    )
    assert answer.status_code in (202, 403), answer.text
    return dict(answer.json())


def run_queue(runtime: Runtime) -> list[str | None]:
    worker = Worker(runtime, LIMITS)
    states = []
    while (state := worker.run_once()) is not None:
        states.append(state)
    return states


def job_view(client: TestClient, runtime: Runtime, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/jobs/{job_id}", headers=headers(runtime, Role.RESEARCHER)).json())


def audit_text(runtime: Runtime) -> str:
    with runtime.sessions() as session:
        rows = session.execute(select(AuditEntry)).scalars()
        return "\n".join(f"{row.reasons} {row.details}" for row in rows)


# --- finding 3: failure text is not an egress channel ------------------------------------------


def test_a_models_exception_text_reaches_neither_the_researcher_nor_the_audit_trail(
    client: TestClient, runtime: Runtime, keys: dict[str, tuple[bytes, bytes]]
) -> None:
    package = torchscript_package(keys[TEAM][0], TEAM, LeakingModel())
    job_id = submit(client, runtime, package, cohort={"modality": ["CT"]})["id"]
    assert run_queue(runtime) == ["failed"]
    view = job_view(client, runtime, job_id)
    assert view["state"] == "failed" and not view["has_result"]
    # A code and a fixed sentence: nothing the model wrote.
    assert view["error_code"] in ("model_failed", "model_refused")
    assert view["reasons"] and all("nothing was released" in reason for reason in view["reasons"])
    assert SECRET not in json.dumps(view) and "pixels=" not in json.dumps(view)
    assert SECRET not in audit_text(runtime) and "pixels=" not in audit_text(runtime)
    with runtime.sessions() as session:
        stored = session.get(Job, job_id)
        assert stored is not None and SECRET not in stored.reasons
    # The audit entry of the failure records how the model was contained (when the sandbox says).
    with runtime.sessions() as session:
        failed = session.execute(
            select(AuditEntry).where(AuditEntry.object == job_id, AuditEntry.action == "job.failed")
        ).scalar_one()
    details = json.loads(failed.details)
    assert details["code"] == view["error_code"]
    assert details["isolation"] and all(isinstance(held, bool) for held in details["isolation"].values())
    # The Python client and the CLI show the same fixed text.
    with serving(runtime) as url:
        researcher = token(runtime, Role.RESEARCHER)
        with ConnectorClient(url, researcher) as connector:
            job = connector.job(job_id)
        assert job.state == "failed" and all(SECRET not in reason for reason in job.reasons)
        shown = CliRunner().invoke(app, ["jobs", "status", job_id, "--url", url, "--token", researcher])
        assert shown.exit_code == 0, shown.output
        assert "nothing was released" in shown.output and SECRET not in shown.output
        assert "pixels=" not in shown.output


# --- finding 4: k holds on the cohort the model sees, for every release -----------------------


def test_a_job_whose_runnable_cohort_is_below_k_is_refused_at_start(
    tmp_path: Path,
    database_url: str,
    one_dx_patient_dir: Path,
    keys: dict[str, tuple[bytes, bytes]],
) -> None:
    runtime = build_runtime(load_settings(data_dir=tmp_path / "dx", database_url=database_url))
    try:
        ingest(runtime, one_dx_patient_dir, DATASET, DEFAULT_OPTIONS)
        activate(runtime, {DATASET: {"k": 2}})
        manifest, weights = train_demo_model(seed=0)
        document = json.loads(manifest.model_dump_json())
        document["input"]["modalities"] = ["DX"]
        document["output"]["kind"] = "aggregate-metrics"
        package = build_package(Manifest.model_validate(document), weights)
        signed = (package, sign_package(package, keys[TEAM][0], TEAM))
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            client.post(
                "/v1/teams/keys",
                json={"team": TEAM, "public_key": keys[TEAM][1].decode()},
                headers=headers(runtime, Role.STEWARD, "anna"),
            ).raise_for_status()
            # The filter matches all five patients; the model reads DX, which one of them has.
            submitted = submit(client, runtime, signed)
            assert submitted["error"] == "access_denied", submitted
            assert "cohort of 1 patient is below the minimum of 2" in submitted["detail"]
            # Queued while the DPO allowed k = 1, then k became 2: refused at start, with the count.
            activate(runtime, {DATASET: {"k": 1}})
            queued = submit(client, runtime, signed)
            assert queued["state"] == "queued", queued
            activate(runtime, {DATASET: {"k": 2}})
            assert run_queue(runtime) == ["denied"]
            view = job_view(client, runtime, queued["id"])
            assert view["error_code"] == "access_denied" and not view["has_result"]
            assert view["cohort_size"] == 0 and view["studies_done"] == 0
            assert any("below the minimum of 2" in reason for reason in view["reasons"])
            assert any("1 of the 5 patients" in reason for reason in view["reasons"])
        # Not even an aggregate of that one patient may leave.
        release = {
            "action": "release",
            "dataset": DATASET,
            "result": {
                "kind": "aggregate",
                "cohort_size": 1,
                "min_cell": None,
                "contains_pixels": False,
                "contains_pseudonyms": False,
                "bytes": 200,
                "labels": 2,
                "decimals": None,
                "studies": 1,
                "numbers": 5,
            },
            "budget": {"used": 0},
        }
        decision = runtime.policy.decide_release(release, "test", ["dpo"])
        assert not decision.allow
        assert "aggregate results need a runnable cohort of at least 2 patients; this cohort has 1" in (
            decision.reasons
        )
    finally:
        runtime.close()


# --- finding 6: a bounded release channel -------------------------------------------------------


def test_a_256_label_model_is_refused_and_nothing_is_released(
    client: TestClient, runtime: Runtime, keys: dict[str, tuple[bytes, bytes]]
) -> None:
    package = torchscript_package(keys[TEAM][0], TEAM, WideModel(), labels=256)
    job_id = submit(client, runtime, package, cohort={"modality": ["CT"]})["id"]
    assert run_queue(runtime) == ["failed"]
    view = job_view(client, runtime, job_id)
    assert view["error_code"] == "egress_denied" and not view["has_result"]
    assert "egress: the result has 256 labels, above the maximum of 16" in view["reasons"]
    with runtime.sessions() as session:
        assert session.execute(select(ReleaseBudget)).first() is None


def test_per_study_values_are_quantised_and_the_result_says_what_it_carries(
    client: TestClient, runtime: Runtime, keys: dict[str, tuple[bytes, bytes]]
) -> None:
    job_id = submit(client, runtime, demo_package(keys[TEAM][0], TEAM), cohort={"modality": ["CT"]})["id"]
    assert run_queue(runtime) == ["succeeded"]
    me = headers(runtime, Role.RESEARCHER)
    body = verify_result(
        client.get(f"/v1/jobs/{job_id}/result", headers=me).text,
        client.get("/v1/connector/keys").json()["keys"][0],
    )
    values = [value for study in body["per_study"] for value in study["values"].values()]
    assert len(values) == 6 and all(round(value, 2) == value for value in values)
    assert body["per_study_decimals"] == 2
    with runtime.sessions() as session:
        budget = session.get(ReleaseBudget, (TEAM, DATASET))
    # 6 per-study values, the study count, 2 means and 2 predicted counts: charged with the release.
    assert budget is not None and budget.used == 11 and budget.releases == 1


def test_the_release_budget_is_kept_per_team_and_dataset(
    client: TestClient, runtime: Runtime, keys: dict[str, tuple[bytes, bytes]], cohort_dir: Path
) -> None:
    # Room for one demo result (11 numbers) per team and dataset, not two.
    ingest(runtime, cohort_dir, OTHER_DATASET, DEFAULT_OPTIONS)
    terms = {"k": 2, "egress": {"max_released_numbers": 15}}
    activate(runtime, {DATASET: terms, OTHER_DATASET: terms})
    ours = demo_package(keys[TEAM][0], TEAM)
    first = submit(client, runtime, ours, cohort={"modality": ["CT"]})["id"]
    assert run_queue(runtime) == ["succeeded"]
    second = submit(client, runtime, ours, cohort={"modality": ["CT"]})["id"]
    assert run_queue(runtime) == ["failed"]
    view = job_view(client, runtime, second)
    assert view["error_code"] == "egress_denied" and not view["has_result"]
    assert (
        f'egress: the result would release 11 numbers; the team has used 11 of its budget of 15 for '
        f'dataset "{DATASET}"'
    ) in view["reasons"]
    me = headers(runtime, Role.RESEARCHER)
    assert client.get(f"/v1/jobs/{second}/result", headers=me).status_code == 404
    assert client.get(f"/v1/jobs/{first}/result", headers=me).status_code == 200
    # Another team on the same dataset, and the same team on another dataset, have their own.
    theirs = demo_package(keys[OTHER_TEAM][0], OTHER_TEAM)
    submit(client, runtime, theirs, cohort={"modality": ["CT"]})
    submit(client, runtime, ours, dataset=OTHER_DATASET, cohort={"modality": ["CT"]})
    assert run_queue(runtime) == ["succeeded", "succeeded"]
    with runtime.sessions() as session:
        used = {(row.team, row.dataset): row.used for row in session.execute(select(ReleaseBudget)).scalars()}
    assert used == {(TEAM, DATASET): 11, (OTHER_TEAM, DATASET): 11, (TEAM, OTHER_DATASET): 11}


def test_the_release_budget_migration_matches_its_model(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert [difference for difference in differences if "release_budgets" in repr(difference)] == []
    finally:
        engine.dispose()


def test_the_shipped_terms_bound_every_dataset() -> None:
    egress = json.loads((default_policies_dir() / "data.json").read_text())["connector"]["settings"][
        "defaults"
    ]["egress"]
    assert egress["max_labels"] <= 16 and egress["per_study_decimals"] <= 2
    assert isinstance(egress["max_released_numbers"], int)
