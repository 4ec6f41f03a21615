"""The DPO's tools as DPOs use them: the `policy`, `consent` and `permit` commands, and the API."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from connector.api.security import route_roles
from connector.cli import app
from connector.identity.roles import Role
from connector.policy.bundle import PolicyBundle, default_policies_dir
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.conftest import bearer
from tests.policy_fixtures import access_request, add_dataset, permit_for


def shipped_files() -> dict[str, str]:
    return dict(PolicyBundle.from_dir(default_policies_dir()).files)


def test_the_api_role_table_names_every_route_with_the_roles_the_code_admits(client: TestClient) -> None:
    table = json.loads(shipped_files()["data.json"])["connector"]["settings"]["api_routes"]
    declared = {}
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute):
            roles = route_roles(route)
            if roles:
                for method in route.methods:
                    declared[f"{method} {route.path}"] = sorted(role.value for role in roles)
    assert {key: sorted(value) for key, value in table.items()} == declared


def test_the_dpo_activates_over_the_api_and_others_may_not(
    client: TestClient, token_for, runtime: Runtime
) -> None:  # type: ignore[no-untyped-def]
    dpo, researcher = bearer(token_for(Role.DPO, sub="dora")), bearer(token_for(Role.RESEARCHER, sub="alice"))
    files = shipped_files()
    settings_doc = json.loads(files["data.json"])
    settings_doc["connector"]["settings"]["datasets"]["trial-cohort"] = {"k": 11}
    files["data.json"] = json.dumps(settings_doc)
    assert client.post("/v1/policy/activate", json={"files": files}, headers=researcher).status_code == 403
    checked = client.post("/v1/policy/check", json={"files": files}, headers=dpo)
    assert checked.status_code == 200 and not [
        f for f in checked.json()["findings"] if f["severity"] == "error"
    ]
    tested = client.post("/v1/policy/test", json={"files": files}, headers=dpo).json()
    assert tested["passed"] and tested["tests"] > 0 and tested["coverage_percent"] > 0
    activated = client.post("/v1/policy/activate", json={"files": files, "note": "k 11"}, headers=dpo)
    assert activated.status_code == 200, activated.text
    assert activated.json()["version"]["label"] == "v2"
    assert client.get("/v1/policy/active", headers=researcher).json()["label"] == "v2"
    history = client.get("/v1/policy/history", headers=dpo).json()
    assert [row["label"] for row in history] == ["v2", "v1"] and history[0]["activated_by"] == "dora"

    broken = {**files, "connector/broken.rego": "package connector.broken\n\nx if {\n"}
    refused = client.post("/v1/policy/activate", json={"files": broken}, headers=dpo)
    assert refused.status_code == 409 and refused.json()["error"] == "policy_refused"
    assert refused.json()["outcome"]["findings"][0]["file"] == "connector/broken.rego"
    assert client.get("/v1/policy/active", headers=dpo).json()["label"] == "v2"
    rolled = client.post("/v1/policy/rollback", json={"version": 1}, headers=dpo)
    assert rolled.status_code == 200 and rolled.json()["version"]["label"] == "v3"
    assert client.post("/v1/policy/rollback", json={"version": 99}, headers=dpo).status_code == 404


def test_the_rego_role_policy_can_narrow_what_the_code_admits(
    client: TestClient, token_for, runtime: Runtime
) -> None:  # type: ignore[no-untyped-def]
    researcher = bearer(token_for(Role.RESEARCHER, sub="alice"))
    assert client.get("/v1/me", headers=researcher).status_code == 200
    files = shipped_files()
    settings_doc = json.loads(files["data.json"])
    settings_doc["connector"]["settings"]["api_routes"]["GET /v1/me"] = ["dpo"]
    files["data.json"] = json.dumps(settings_doc)
    outcome = runtime.policy.activate(PolicyBundle(files), "dora")
    assert outcome.activated, outcome.reasons
    denied = client.get("/v1/me", headers=researcher)
    assert denied.status_code == 403 and "researcher" in denied.json()["detail"]
    assert runtime.audit.query(action="policy.api")[-1].outcome == "deny"


def test_researchers_ask_about_their_own_requests_only(
    client: TestClient, token_for, runtime: Runtime
) -> None:  # type: ignore[no-untyped-def]
    add_dataset(runtime, "demo-cohort", [f"PSN-{index}" for index in range(25)])
    alice = bearer(token_for(Role.RESEARCHER, sub="alice"))
    request = access_request(permit=permit_for(runtime))
    answer = client.post("/v1/access/decide", json=request, headers=alice)
    assert answer.status_code == 200 and answer.json()["allow"], answer.text
    assert set(answer.json()) == {"allow", "reasons", "obligations", "policy_version"}
    mallory = bearer(token_for(Role.RESEARCHER, sub="mallory"))
    assert client.post("/v1/access/decide", json=request, headers=mallory).status_code == 403
    hostile = client.post("/v1/access/decide", json=[1, 2, {"x": "y" * 1000}], headers=alice)
    assert hostile.status_code == 403  # not an object: no requester, so not the caller's own


def test_consent_and_revocation_over_the_api(client: TestClient, token_for, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    add_dataset(runtime, "demo-cohort", ["PSN-A", "PSN-B"])
    dpo, hdab = bearer(token_for(Role.DPO, sub="dora")), bearer(token_for(Role.HDAB, sub="hdab-be"))
    body = {"entries": [{"dataset": "demo-cohort", "pseudonym": "PSN-A", "status": "opted-out"}]}
    imported = client.post("/v1/consent/import", json=body, headers=dpo)
    assert imported.status_code == 200 and imported.json()["entries"] == 1
    listed = client.get("/v1/consent", params={"status": "opted-out"}, headers=dpo).json()
    assert [row["pseudonym"] for row in listed] == ["PSN-A"]
    bad = client.post("/v1/consent/import", json={"entries": [{"status": "nope"}]}, headers=dpo)
    assert bad.status_code == 422 and "nothing imported" in bad.json()["detail"]
    revoked = client.post("/v1/permits/revoked", json={"permit_id": "p-1", "reason": "fraud"}, headers=hdab)
    assert revoked.status_code == 201
    assert client.get("/v1/permits/revoked", headers=dpo).json()[0]["permit_id"] == "p-1"


def _cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, list(args), env={"CONNECTOR_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    )
    return result.exit_code, result.output


def test_the_dpo_cli_end_to_end(tmp_path: Path) -> None:
    k = json.loads(shipped_files()["data.json"])["connector"]["settings"]["datasets"]["demo-cohort"]["k"]
    runtime = build_runtime(load_settings(data_dir=tmp_path / "data"))
    add_dataset(runtime, "demo-cohort", [f"PSN-{index:02d}" for index in range(k + 1)])
    runtime.close()
    code, output = _cli(tmp_path, "policy", "check")
    assert code == 0 and "0 errors" in output
    code, output = _cli(tmp_path, "policy", "test", "--json")
    report = json.loads(output)
    assert code == 0 and report["passed"] and report["coverage_percent"] >= 90

    code, permit = _cli(
        tmp_path,
        "permit",
        "issue",
        "--requester",
        "alice",
        "--organisation",
        "Uni Leuven AI Lab",
        "--country",
        "DE",
        "--purpose",
        "ai-development",
        "--dataset",
        "demo-cohort",
    )
    assert code == 0, permit
    # stderr (mixed into the output here) names the permit id first; stdout holds the permit alone.
    permit_id, permit = permit.split()[1], permit.strip().splitlines()[-1]
    request = tmp_path / "request.json"
    request.write_text(json.dumps(access_request(permit=permit, size=k)))
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request), "--json")
    decision = json.loads(output)
    assert code == 0 and decision["allow"] and decision["policy_version"] == "v1"
    assert set(decision) == {"allow", "reasons", "obligations", "policy_version"}

    optouts = tmp_path / "optouts.csv"
    optouts.write_text(
        "dataset,pseudonym,status\ndemo-cohort,PSN-00,opted-out\ndemo-cohort,PSN-01,opted-out\n"
    )
    code, output = _cli(tmp_path, "consent", "import", str(optouts))
    assert code == 0 and "imported 2 entries" in output
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(request))
    assert code == 1 and "DENY" in output and "below the minimum" in output  # k + 1 - 2 opted out < k

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.rego").write_text("package x\n\ny if {\n")
    code, output = _cli(tmp_path, "policy", "activate", str(broken))
    assert code == 1 and "refused" in output and "x.rego:4: rego_parse_error" in output
    code, output = _cli(tmp_path, "policy", "history", "--json")
    assert [row["label"] for row in json.loads(output)] == ["v1"]
    code, output = _cli(tmp_path, "policy", "diff", str(default_policies_dir()), "--json")
    assert code == 0 and json.loads(output)["changed"] == []
    code, output = _cli(tmp_path, "consent", "list", "--json")
    assert sorted(row["pseudonym"] for row in json.loads(output)) == ["PSN-00", "PSN-01"]
    code, output = _cli(tmp_path, "permit", "revoke", "permit-x", "--reason", "ended")
    assert code == 2 and "never issued" in output  # a typo, not a permit this connector knows
    code, output = _cli(tmp_path, "permit", "revoke", permit_id, "--reason", "ended")
    assert code == 0 and f"permit {permit_id} revoked" in output


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    not_json = tmp_path / "request.json"
    not_json.write_text("{oops")
    code, output = _cli(tmp_path, "policy", "decide", "--input", str(not_json))
    assert code == 2 and "not JSON" in output
    missing = tmp_path / "missing"
    code, output = _cli(tmp_path, "policy", "check", str(missing))
    assert code == 2 and "does not exist" in output
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,pseudonym,status\nnope,PSN-1,opted-out\n")
    code, output = _cli(tmp_path, "consent", "import", str(bad))
    assert code == 2 and "nothing imported" in output
