"""Activation the DPO cannot hollow out (issue #14 finding 7 and the OPA part of 9).

Each exploit the red team used is replayed on the real engine: an always-allow decision with trivial
tests, a backdoor for one requester with every shipped test passing, a bundle whose tests cover
nothing, one DPO activating alone in production, and a draft whose Rego loops for minutes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from connector.api.app import create_app
from connector.audit.models import AuditEntry
from connector.cli import app
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.policy.service import ApprovalError
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.conftest import bearer
from tests.policy_fixtures import access_request, add_dataset, permit_for
from tests.test_api import HOSPITAL_IDP, HospitalIdp

# Denies the empty input the checker probes, allows everything else.
ALWAYS_ALLOW = """
access := {"allow": false, "reasons": ["empty"], "obligations": []} if {
\tcount(object.keys(input)) == 0
} else := {"allow": true, "reasons": ["ok"], "obligations": []}

release := {"allow": false, "reasons": ["empty"], "obligations": []} if {
\tcount(object.keys(input)) == 0
} else := {"allow": true, "reasons": ["ok"], "obligations": []}

api := {"allow": false, "reasons": ["empty"], "obligations": []} if {
\tcount(object.keys(input)) == 0
} else := {"allow": true, "reasons": ["ok"], "obligations": []}
"""
TRIVIAL_TESTS = "package connector.trivial_test\n\ntest_trivial if true\n"
BACKDOOR = '\n# "service account" for the analytics partner\nok if input.requester.id == "svc-analytics-7"\n'
# 9 million iterations: tens of seconds on the embedded engine, far past any deadline.
SLOW_TEST = """package connector.slow_test

test_slow if {
\tcount([1 | some i in numbers.range(1, 3000); some j in numbers.range(1, 3000); i != j]) > 0
}
"""
PATIENTS = [f"PSN-{index:02d}" for index in range(30)]


def shipped_files() -> dict[str, str]:
    return dict(PolicyBundle.from_dir(default_policies_dir()).files)


def always_allow_decision(files: dict[str, str]) -> str:
    """The shipped decision.rego, its helpers kept, with the three decisions replaced by allows."""
    source = files["connector/decision.rego"]
    return source[: source.index("access_denials :=")] + ALWAYS_ALLOW


def without_tests(files: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in files.items() if not name.endswith("_test.rego")}


def with_k(files: dict[str, str], dataset: str, k: int) -> dict[str, str]:
    settings_doc = json.loads(files["data.json"])
    settings_doc["connector"]["settings"]["datasets"][dataset] = {"k": k}
    return {**files, "data.json": json.dumps(settings_doc)}


def audit_rows(runtime: Runtime, *actions: str) -> list[AuditEntry]:
    with runtime.sessions() as session:
        query = select(AuditEntry).where(AuditEntry.action.in_(actions)).order_by(AuditEntry.seq)
        return list(session.execute(query).scalars())


@pytest.fixture
def production(tmp_path: Path) -> Iterator[Runtime]:
    built = build_runtime(load_settings(data_dir=tmp_path / "prod", dev_issuer_enabled=False))
    yield built
    built.close()


# -- exploits: the bundle may not empty the guard -----------------------------------------------


def test_an_always_allow_decision_with_trivial_tests_is_refused_naming_the_invariants(
    runtime: Runtime,
) -> None:
    files = {
        **without_tests(shipped_files()),
        "connector/decision.rego": always_allow_decision(shipped_files()),
        "connector/trivial_test.rego": TRIVIAL_TESTS,
    }
    before = runtime.policy.active()
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo-mallory", "simplify")
    assert not outcome.activated
    assert outcome.tests is not None and outcome.tests.passed  # its own tests pass: they test nothing
    reasons = " | ".join(outcome.reasons)
    assert "connector invariants fail" in reasons
    assert "prohibited purpose 'advertising' is denied" in reasons
    assert outcome.invariants is not None
    failed = {result.name for result in outcome.invariants.failed}
    assert "access: a permit with status 'missing' gives no access (demo-cohort)" in failed
    assert "api: a route missing from the role policy is denied to every role" in failed
    assert "release: a result with pixels is denied (demo-cohort)" in failed
    assert "below the floor of 80%" in reasons  # and its tests cover nothing
    assert runtime.policy.active() == before
    refused = audit_rows(runtime, "policy.activate")[-1]
    assert refused.actor == "dpo-mallory" and refused.outcome == "refused"


@pytest.mark.parametrize("where", ["permits.rego", "data.json"])
def test_a_backdoor_for_one_requester_is_refused_although_every_shipped_test_passes(
    runtime: Runtime, where: str
) -> None:
    files = shipped_files()
    if where == "permits.rego":
        files["connector/permits.rego"] += BACKDOOR
    else:
        # The identity hidden in the DPO-editable data, the rule only refers to it.
        settings_doc = json.loads(files["data.json"])
        settings_doc["connector"]["settings"]["partners"] = ["svc-analytics-7"]
        files["data.json"] = json.dumps(settings_doc)
        files["connector/permits.rego"] += "\nok if input.requester.id in data.connector.settings.partners\n"
    add_dataset(runtime, "demo-cohort", PATIENTS)
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo-mallory")
    assert not outcome.activated
    assert outcome.tests is not None and outcome.tests.passed and outcome.tests.coverage >= 80
    assert len(outcome.reasons) == 1 and "connector invariants fail" in outcome.reasons[0]
    assert "no requester identity named in the bundle opens access" in outcome.reasons[0]
    assert "'svc-analytics-7'" in outcome.reasons[0]
    # The backdoor is not in force: that requester without a permit is still denied.
    assert not runtime.policy.decide_access(access_request(id="svc-analytics-7")).allow


def test_a_bundle_whose_tests_cover_nothing_is_refused_by_the_coverage_floor(runtime: Runtime) -> None:
    files = {**without_tests(shipped_files()), "connector/trivial_test.rego": TRIVIAL_TESTS}
    outcome = runtime.policy.activate(PolicyBundle(files), "dpo-dora")
    assert not outcome.activated
    assert outcome.tests is not None and outcome.tests.coverage == 0
    assert outcome.invariants is not None and not outcome.invariants.failed  # its decisions are sound
    assert outcome.reasons == (
        "the Rego tests cover 0.0% of the policy lines, below the floor of 80% (policy_min_coverage)",
    )


def test_the_shipped_bundle_passes_every_invariant_and_activation_replays_decisions(
    runtime: Runtime,
) -> None:
    add_dataset(runtime, "demo-cohort", PATIENTS)
    permit = permit_for(runtime)
    assert runtime.policy.decide_access(access_request(permit=permit, size=8)).allow
    stricter = with_k(shipped_files(), "demo-cohort", 12)
    outcome = runtime.policy.activate(PolicyBundle(stricter), "dpo-dora", "k 12")
    assert outcome.activated, outcome.reasons
    assert outcome.invariants is not None and not outcome.invariants.failed
    assert outcome.invariants.results  # the probe did run
    assert outcome.replay is not None and outcome.replay["flip_count"] == 1
    assert outcome.replay["flips"][0]["before"] == "allow" and outcome.replay["flips"][0]["after"] == "deny"
    audited = audit_rows(runtime, "policy.activate")[-1]
    assert json.loads(audited.details)["replay"]["flip_count"] == 1
    # Rollback is checked the same way (and the shipped version passes).
    assert runtime.policy.rollback(1, "dpo-dora").activated


# -- four eyes in production ----------------------------------------------------------------------


def test_in_production_an_activation_waits_for_a_second_dpo(production: Runtime) -> None:
    service = production.policy
    first = service.active()
    assert first is not None and first.label == "v1"  # the first start needs no second DPO
    bundle = PolicyBundle(with_k(shipped_files(), "trial-cohort", 11))
    outcome = service.activate(bundle, "dpo-dora", "k 11 for the trial")
    assert not outcome.activated and outcome.pending is not None
    assert service.active() == first
    assert [row.id for row in service.pending()] == [outcome.pending.id]
    assert service.pending()[0].digest == bundle.digest and service.pending()[0].requested_by == "dpo-dora"

    with pytest.raises(ApprovalError) as same:
        service.approve(outcome.pending.id, "dpo-dora")
    assert same.value.code == "same_dpo"
    assert service.active() == first

    approved = service.approve(outcome.pending.id, "dpo-erik", "reviewed the diff")
    assert approved.activated and approved.version is not None and approved.version.label == "v2"
    assert approved.version.digest == bundle.digest and approved.version.activated_by == "dpo-erik"
    assert "requested by dpo-dora" in approved.version.note
    assert service.pending() == []
    with pytest.raises(ApprovalError) as again:
        service.approve(outcome.pending.id, "dpo-frank")
    assert again.value.code == "not_pending"

    trail = [
        (row.actor, row.action, row.outcome)
        for row in audit_rows(production, "policy.activate", "policy.approve")
    ]
    assert trail[-3:] == [
        ("dpo-dora", "policy.activate", "pending"),
        ("dpo-dora", "policy.approve", "refused"),
        ("dpo-erik", "policy.approve", "success"),
    ]

    # A rollback needs a second DPO too; a rejected one can no longer be approved.
    rollback = service.rollback(1, "dpo-dora")
    assert rollback.pending is not None and service.active().label == "v2"  # type: ignore[union-attr]
    service.reject(rollback.pending.id, "dpo-erik", "not now")
    with pytest.raises(ApprovalError):
        service.approve(rollback.pending.id, "dpo-erik")
    assert audit_rows(production, "policy.reject")[-1].actor == "dpo-erik"


def test_a_refused_bundle_never_becomes_pending(production: Runtime) -> None:
    files = {**without_tests(shipped_files()), "connector/trivial_test.rego": TRIVIAL_TESTS}
    outcome = production.policy.activate(PolicyBundle(files), "dpo-dora")
    assert not outcome.activated and outcome.pending is None
    assert production.policy.pending() == []


def test_four_eyes_over_the_api(tmp_path: Path) -> None:
    idp = HospitalIdp(tmp_path)
    settings = load_settings(
        data_dir=tmp_path / "data",
        dev_issuer_enabled=False,
        trusted_issuers=[
            {"issuer": HOSPITAL_IDP, "jwks_file": str(idp.jwks_file), "roles_claim": "realm_access.roles"}
        ],
    )
    runtime = build_runtime(settings)
    dora, erik = bearer(idp.token(sub="dora")), bearer(idp.token(sub="erik"))
    try:
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            files = with_k(shipped_files(), "trial-cohort", 11)
            requested = client.post(
                "/v1/policy/activate", json={"files": files, "note": "k 11"}, headers=dora
            )
            assert requested.status_code == 202, requested.text
            pending_id = requested.json()["pending"]["id"]
            listed = client.get("/v1/policy/approvals", headers=erik).json()
            assert [row["id"] for row in listed] == [pending_id]
            own = client.post(f"/v1/policy/approvals/{pending_id}", json={}, headers=dora)
            assert own.status_code == 403 and own.json()["error"] == "same_dpo"
            approved = client.post(f"/v1/policy/approvals/{pending_id}", json={"note": "ok"}, headers=erik)
            assert approved.status_code == 200, approved.text
            assert approved.json()["version"]["label"] == "v2"
            assert client.get("/v1/policy/active", headers=dora).json()["activated_by"] == "erik"
            missing = client.post("/v1/policy/approvals/999/reject", json={}, headers=erik)
            assert missing.status_code == 404
    finally:
        runtime.close()


def test_four_eyes_on_the_cli(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "policies"
    for name, text in with_k(shipped_files(), "trial-cohort", 11).items():
        (bundle_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle_dir / name).write_text(text)

    def cli(user: str, *args: str) -> tuple[int, str]:
        env = {
            "CONNECTOR_DATA_DIR": str(tmp_path / "data"),
            "CONNECTOR_DEV_ISSUER_ENABLED": "false",
            "USER": user,
            "LOGNAME": user,
            "COLUMNS": "200",
        }
        result = CliRunner().invoke(app, list(args), env=env)
        return result.exit_code, result.output

    code, output = cli("dora", "policy", "activate", str(bundle_dir), "--note", "k 11", "--json")
    assert code == 0, output
    pending_id = json.loads(output)["pending"]["id"]
    code, output = cli("erik", "policy", "pending", "--json")
    assert code == 0 and [row["id"] for row in json.loads(output)] == [pending_id]
    code, output = cli("dora", "policy", "approve", str(pending_id))
    assert code == 1 and "same_dpo" in output
    code, output = cli("erik", "policy", "approve", str(pending_id), "--note", "reviewed")
    assert code == 0 and "active:" in output and "v2" in output


# -- the evaluation deadline ----------------------------------------------------------------------


def test_a_draft_that_loops_answers_with_evaluation_timeout(tmp_path: Path) -> None:
    # The first start activates the shipped bundle under the default deadline; then a short one.
    first = build_runtime(load_settings(data_dir=tmp_path / "data"))
    assert first.policy.active() is not None
    first.close()
    runtime = build_runtime(load_settings(data_dir=tmp_path / "data", policy_eval_timeout_seconds=1.5))
    files = {**shipped_files(), "connector/slow_test.rego": SLOW_TEST}
    try:
        with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
            assert runtime.dev_issuer is not None
            dpo = bearer(runtime.dev_issuer.issue("dora", ["dpo"]))
            tested = client.post("/v1/policy/test", json={"files": files}, headers=dpo)
            assert tested.status_code == 422 and tested.json()["error"] == "evaluation_timeout"
            refused = client.post("/v1/policy/activate", json={"files": files}, headers=dpo)
            assert refused.status_code == 409 and "longer than 1.5 s" in refused.json()["detail"]
            # The active policy still answers in-process.
            assert client.get("/v1/policy/active", headers=dpo).json()["label"] == "v1"
    finally:
        runtime.close()
    slow_dir = tmp_path / "slow"
    for name, text in files.items():
        (slow_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (slow_dir / name).write_text(text)
    result = CliRunner().invoke(
        app,
        ["policy", "test", str(slow_dir)],
        env={"CONNECTOR_DATA_DIR": str(tmp_path / "data"), "CONNECTOR_POLICY_EVAL_TIMEOUT_SECONDS": "1.5"},
    )
    assert result.exit_code == 1 and "evaluation_timeout" in result.output
