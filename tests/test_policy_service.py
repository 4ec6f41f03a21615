"""The policy service on the real embedded engine and a real database: decisions, permits,
consent, activation, rollback, diff, fail-closed behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from connector.crypto.dataset_secrets import load_or_create_dataset_secret
from connector.deid.keys import DatasetKeys
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.policy.consent import ConsentImportError, list_entries, parse_entries
from connector.policy.optout import import_consent
from connector.policy.permits import DevPermitIssuer
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.policy_fixtures import access_request, add_dataset, permit_for

PATIENTS = [f"PSN-P{index:03d}" for index in range(30)]


@pytest.fixture
def cohort_runtime(runtime: Runtime) -> Runtime:
    add_dataset(runtime, "demo-cohort", PATIENTS)
    return runtime


def shipped() -> PolicyBundle:
    return PolicyBundle.from_dir(default_policies_dir())


def with_changes(bundle: PolicyBundle, **files: str) -> PolicyBundle:
    return PolicyBundle({**bundle.files, **{name.replace("__", "/"): text for name, text in files.items()}})


def test_first_start_activates_the_shipped_bundle_and_audits_it(runtime: Runtime) -> None:
    active = runtime.policy.active()
    assert active is not None and active.version == 1 and active.digest == shipped().digest
    assert active.activated_by == "connector (first start)"
    entries = runtime.audit.query(action="policy.activate")
    assert [(entry.outcome, entry.object) for entry in entries] == [("success", shipped().digest)]


def test_a_permitted_request_with_a_valid_permit_is_allowed(cohort_runtime: Runtime) -> None:
    request = access_request(permit=permit_for(cohort_runtime))
    decision = cohort_runtime.policy.decide_access(request, actor="alice")
    assert decision.allow, decision.reasons
    assert decision.policy_version == "v1"
    assert any("ai-development" in reason for reason in decision.reasons)
    entry = cohort_runtime.audit.query(action="policy.access")[-1]
    assert entry.outcome == "allow" and entry.actor == "alice" and entry.object == "demo-cohort"
    details = json.loads(entry.details)
    # The raw permit never reaches the audit trail: only what its verification found.
    assert "permit" not in details["input"] and details["input"]["permit_check"]["status"] == "valid"
    assert details["policy_version"] == "v1" and details["policy_digest"] == shipped().digest


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"purpose": "advertising"}, "prohibited"),
        ({"purpose": "astrology"}, "unknown"),
        ({"size": 3}, "below the minimum"),
        ({"country": "US"}, "US"),
    ],
)
def test_denials_carry_their_reason(
    cohort_runtime: Runtime, changes: dict[str, object], expected: str
) -> None:
    permit = permit_for(cohort_runtime, purposes=[str(changes.get("purpose", "ai-development"))])
    decision = cohort_runtime.policy.decide_access(access_request(permit=permit, **changes))
    assert not decision.allow
    assert any(expected in reason for reason in decision.reasons), decision.reasons


def test_permit_problems_are_denied_with_their_reason(cohort_runtime: Runtime, tmp_path: Path) -> None:
    service = cohort_runtime.policy
    assert runtime_issuer(cohort_runtime)
    missing = service.decide_access(access_request(permit=None))
    assert not missing.allow and any("no data permit" in reason for reason in missing.reasons)

    expired = cohort_runtime.permit_issuer._issuer.sign(  # type: ignore[union-attr]
        "alice",
        -3600,
        {
            "jti": "p-old",
            "org": "Uni Leuven AI Lab",
            "purposes": ["ai-development"],
            "datasets": ["demo-cohort"],
            "countries": ["DE"],
            "conditions": [],
        },
    )
    decision = service.decide_access(access_request(permit=expired))
    assert not decision.allow and any("expired" in reason for reason in decision.reasons)

    # Signed by another key under the same issuer name: a forgery.
    forger = DevPermitIssuer.load_or_create(tmp_path / "forger")
    forged = forger.issue("alice", "Uni Leuven AI Lab", ["ai-development"], ["demo-cohort"], ["DE"])
    decision = service.decide_access(access_request(permit=forged))
    assert not decision.allow and any("signature" in reason for reason in decision.reasons)

    unsigned = jwt.encode({"iss": "urn:connector:dev-hdab", "sub": "alice"}, key=None, algorithm="none")
    decision = service.decide_access(access_request(permit=unsigned))
    assert not decision.allow

    other_dataset = permit_for(cohort_runtime, datasets=["another-dataset"])
    decision = service.decide_access(access_request(permit=other_dataset))
    assert not decision.allow and any("demo-cohort" in reason for reason in decision.reasons)

    other_requester = permit_for(cohort_runtime, requester="mallory")
    decision = service.decide_access(access_request(permit=other_requester))
    assert not decision.allow and any("mallory" in reason for reason in decision.reasons)


def runtime_issuer(runtime: Runtime) -> bool:
    return runtime.permit_issuer is not None


def test_a_revoked_permit_is_denied_from_the_next_decision(cohort_runtime: Runtime) -> None:
    permit = permit_for(cohort_runtime, permit_id="permit-007")
    assert cohort_runtime.policy.decide_access(access_request(permit=permit)).allow
    cohort_runtime.policy.revoke_permit("permit-007", "project ended early", "hdab-officer")
    decision = cohort_runtime.policy.decide_access(access_request(permit=permit))
    assert not decision.allow
    assert any("revoked" in reason and "project ended early" in reason for reason in decision.reasons)
    assert cohort_runtime.policy.revoked_permits()[0]["permit_id"] == "permit-007"


def test_a_permit_from_an_untrusted_hdab_is_denied_in_production(tmp_path: Path) -> None:
    production = build_runtime(load_settings(data_dir=tmp_path / "prod", dev_issuer_enabled=False))
    try:
        assert production.permit_issuer is None
        add_dataset(production, "demo-cohort", PATIENTS)
        rogue = DevPermitIssuer.load_or_create(tmp_path / "rogue-hdab")
        permit = rogue.issue("alice", "Uni Leuven AI Lab", ["ai-development"], ["demo-cohort"], ["DE"])
        decision = production.policy.decide_access(access_request(permit=permit))
        assert not decision.allow and any(
            "not trusted" in reason or "trusted" in reason for reason in decision.reasons
        )
    finally:
        production.close()


def test_a_configured_hdab_key_is_trusted(tmp_path: Path) -> None:
    hdab = DevPermitIssuer.load_or_create(tmp_path / "national-hdab")
    jwks_file = tmp_path / "hdab-jwks.json"
    jwks_file.write_text(json.dumps(hdab._issuer.jwks()))
    settings = load_settings(
        data_dir=tmp_path / "prod",
        dev_issuer_enabled=False,
        hdab_issuers=[
            {"issuer": "urn:connector:dev-hdab", "jwks_file": str(jwks_file), "algorithms": ["EdDSA"]}
        ],
    )
    production = build_runtime(settings)
    try:
        add_dataset(production, "demo-cohort", PATIENTS)
        permit = hdab.issue("alice", "Uni Leuven AI Lab", ["ai-development"], ["demo-cohort"], ["DE"])
        assert production.policy.decide_access(access_request(permit=permit)).allow
    finally:
        production.close()


@pytest.mark.parametrize(
    "request_document",
    [
        "not an object",
        {"action": "access"},
        {**access_request(), "requester": {"id": "alice", "organisation": "x", "country": "Germany"}},
        {**access_request(), "cohort": {"size": -1}},
        {**access_request(), "surprise": True},
    ],
)
def test_requests_outside_the_format_are_denied_and_audited(
    cohort_runtime: Runtime, request_document: object
) -> None:
    decision = cohort_runtime.policy.decide_access(request_document)
    assert not decision.allow
    assert all("access-request format" in reason for reason in decision.reasons)
    assert cohort_runtime.audit.query(action="policy.access")[-1].outcome == "deny"


def test_opted_out_patients_leave_the_cohort_in_one_filter(database_url: str, tmp_path: Path) -> None:
    runtime = build_runtime(load_settings(data_dir=tmp_path / "data", database_url=database_url))
    try:
        add_dataset(runtime, "demo-cohort", PATIENTS)
        rows = [
            {"dataset": "demo-cohort", "pseudonym": PATIENTS[0], "status": "opted-out"},
            {"dataset": "demo-cohort", "pseudonym": PATIENTS[1], "status": "withdrawn"},
            {"dataset": "demo-cohort", "pseudonym": PATIENTS[2], "status": "consented"},
        ]
        outcome = import_consent(runtime, rows, "registry.csv", "dpo-dora")
        assert outcome.result.by_status == {"opted-out": 1, "withdrawn": 1, "consented": 1}
        split = runtime.policy.cohort("demo-cohort")
        assert split.excluded == 2 and set(split.included) == set(PATIENTS[2:])
        counted = runtime.policy.cohort("demo-cohort", count_only=True)
        assert (counted.included_count, counted.excluded, counted.included) == (28, 2, ())
        assert split.condition  # one SQL condition, applied by the database to the whole cohort
        decision = runtime.policy.decide_access(access_request(permit=permit_for(runtime), size=100))
        assert decision.allow, decision.reasons
        assert any("exclude 2 patients" in obligation for obligation in decision.obligations)
        audited = json.loads(runtime.audit.query(action="policy.access")[-1].details)["input"]["cohort"]
        assert audited == {"size": 28, "excluded": 2}  # never more than the consenting cohort

        # A dataset whose legal basis is consent includes only those who consented.
        add_dataset(runtime, "demo-consented", [f"PSN-C{index}" for index in range(4)])
        import_consent(
            runtime, [{"dataset": "demo-consented", "pseudonym": "PSN-C0", "status": "consented"}], "x", "d"
        )
        assert runtime.policy.cohort("demo-consented").included == ("PSN-C0",)
    finally:
        runtime.close()


def test_consent_by_hospital_id_is_stored_as_pseudonyms_only(cohort_runtime: Runtime) -> None:
    add_dataset(cohort_runtime, "second", ["PSN-X"])
    outcome = import_consent(
        cohort_runtime,
        [{"patient_id": "MRN-4711", "issuer": "HOSP", "status": "opted-out"}],
        "optouts.csv",
        "dpo",
    )
    assert outcome.result.entries == 2 and outcome.result.datasets == ("demo-cohort", "second")
    rows = list_entries(cohort_runtime.sessions)
    for row in rows:
        secret = load_or_create_dataset_secret(cohort_runtime.settings.keys_dir, row["dataset"])
        assert row["pseudonym"] == DatasetKeys(secret).pseudonym("HOSP|MRN-4711")
    assert "MRN-4711" not in json.dumps(rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"dataset": "demo-cohort", "pseudonym": "PSN-1", "status": "maybe"}, "status"),
        ({"pseudonym": "PSN-1", "status": "opted-out"}, "needs its dataset"),
        ({"dataset": "nope", "pseudonym": "PSN-1", "status": "opted-out"}, "no dataset"),
        ({"status": "opted-out"}, "pseudonym"),
    ],
)
def test_a_bad_consent_row_imports_nothing(
    cohort_runtime: Runtime, row: dict[str, str], message: str
) -> None:
    good = {"dataset": "demo-cohort", "pseudonym": PATIENTS[5], "status": "opted-out"}
    with pytest.raises(ConsentImportError, match=message):
        import_consent(cohort_runtime, [good, row], "bad.csv", "dpo")
    assert list_entries(cohort_runtime.sessions) == []
    with pytest.raises(ConsentImportError):
        parse_entries([row], ["demo-cohort"], cohort_runtime.settings.keys_dir, "x")


def test_activation_refuses_broken_bundles_and_keeps_the_active_one(cohort_runtime: Runtime) -> None:
    service = cohort_runtime.policy
    base = shipped()
    permit = permit_for(cohort_runtime)
    broken = {
        "syntax": with_changes(base, **{"connector__broken.rego": "this is not rego"}),
        "rego": with_changes(base, **{"connector__extra.rego": "package connector.extra\n\nx if {\n"}),
        "failing test": with_changes(
            base,
            **{"connector__extra_test.rego": "package connector.extra_test\n\ntest_fails if {\n\tfalse\n}\n"},
        ),
        "fails open": with_changes(
            base,
            **{
                "connector__open.rego": "package connector.open\n\ndefault allow := true\n",
                "connector__open_test.rego": "package connector.open_test\n\nimport data.connector.open\n\n"
                "test_open if {\n\topen.allow\n}\n",
            },
        ),
        "bad data": with_changes(base, **{"data.json": "{not json"}),
    }
    for name, bundle in broken.items():
        outcome = service.activate(bundle, "dpo-dora", name)
        assert not outcome.activated, name
        assert outcome.version is not None and outcome.version.version == 1, name
        assert service.decide_access(access_request(permit=permit)).allow, name
    refused = cohort_runtime.audit.query(action="policy.activate")
    assert [entry.outcome for entry in refused][1:] == ["refused"] * len(broken)
    assert [row.version for row in service.history()] == [1]


def test_missing_decision_document_is_refused(cohort_runtime: Runtime) -> None:
    bundle = PolicyBundle(
        {
            "connector/x.rego": "package connector.x\n\ny := 1\n",
            "connector/x_test.rego": "package connector.x_test\n\nimport data.connector.x\n\n"
            "test_y if {\n\tx.y == 1\n}\n",
        }
    )
    outcome = cohort_runtime.policy.activate(bundle, "dpo")
    assert not outcome.activated
    assert any("data.connector.decision.access" in finding.message for finding in outcome.findings)


def test_activate_rollback_and_history(cohort_runtime: Runtime) -> None:
    service = cohort_runtime.policy
    add_dataset(cohort_runtime, "trial-cohort", PATIENTS)
    strict = json.loads(shipped().files["data.json"])
    strict["connector"]["settings"]["datasets"]["trial-cohort"] = {"k": 1000}
    bundle = with_changes(shipped(), **{"data.json": json.dumps(strict)})
    outcome = service.activate(bundle, "dpo-dora", "raise k for the trial cohort")
    assert outcome.activated and outcome.version is not None and outcome.version.label == "v2"
    assert outcome.tests is not None and outcome.tests.passed
    permit = permit_for(cohort_runtime, datasets=["trial-cohort"])
    decision = service.decide_access(access_request(permit=permit, dataset="trial-cohort"))
    assert not decision.allow and decision.policy_version == "v2"
    rolled = service.rollback(1, "dpo-dora")
    assert rolled.activated and rolled.version is not None and rolled.version.label == "v3"
    assert rolled.version.digest == shipped().digest
    assert service.decide_access(access_request(permit=permit, dataset="trial-cohort")).allow
    assert [(row.label, row.note) for row in service.history()] == [
        ("v3", "rollback to v1"),
        ("v2", "raise k for the trial cohort"),
        ("v1", "initial policies"),
    ]
    again = service.activate(shipped(), "dpo-dora")
    assert again.activated and again.version is not None and again.version.label == "v3"  # unchanged


def test_diff_replays_recorded_decisions_under_a_draft(cohort_runtime: Runtime) -> None:
    service = cohort_runtime.policy
    permit = permit_for(cohort_runtime)
    assert service.decide_access(access_request(permit=permit)).allow
    assert not service.decide_access(access_request(permit=permit, purpose="advertising")).allow
    strict = json.loads(shipped().files["data.json"])
    strict["connector"]["settings"]["datasets"]["demo-cohort"]["k"] = 1000
    report = service.diff(with_changes(shipped(), **{"data.json": json.dumps(strict)}))
    assert report.replayed == 2
    flipped = [entry for entry in report.changed if entry.before["allow"] != entry.after["allow"]]
    assert len(flipped) == 1
    change = flipped[0]
    assert change.before["allow"] and not change.after["allow"]
    assert any("1000" in reason for reason in change.after["reasons"])
    assert service.diff(shipped()).changed == ()
    broken = service.diff(with_changes(shipped(), **{"connector__x.rego": "package x\n\ny if {\n"}))
    assert broken.errors and broken.replayed == 0


def test_an_engine_error_is_a_deny(cohort_runtime: Runtime) -> None:
    # Two complete definitions of the access decision that both hold: OPA fails at evaluation time.
    conflicting = with_changes(
        shipped(),
        **{
            "connector__conflict.rego": "package connector.decision\n\n"
            'access := {"allow": true, "reasons": ["x"], "obligations": []} if input.purpose == "conflict"\n',
        },
    )
    cohort_runtime.policy.refresh(force=True)  # the active version is loaded; ours replaces it below
    backend = cohort_runtime.policy.backend
    backend.load(conflicting, cohort_runtime.policy.state())
    decision = cohort_runtime.policy.decide("access", {**access_request(), "purpose": "conflict"})
    assert not decision.allow
    assert any("policy engine failed" in reason for reason in decision.reasons), decision.reasons


def test_no_active_policy_denies_everything(tmp_path: Path) -> None:
    empty = tmp_path / "no-policies"
    empty.mkdir()
    runtime = build_runtime(load_settings(data_dir=tmp_path / "data", policies_dir=empty))
    try:
        decision = runtime.policy.decide_access(access_request())
        assert not decision.allow and "no policy is active" in decision.reasons[0]
        assert not runtime.policy.authorize("GET", "/v1/me", ["dpo"], "someone").allow
    finally:
        runtime.close()
