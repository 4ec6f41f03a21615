"""The service as its callers see it: probes, roles, every auth failure, one error format, logs."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from connector.api.app import create_app
from connector.api.security import assert_every_route_declares_roles
from connector.identity.roles import Role
from connector.observability.logging import JsonFormatter
from connector.runtime import build_runtime
from connector.settings import load_settings
from tests.conftest import bearer

HOSPITAL_IDP = "https://idp.hospital.example/realms/radiology"


class HospitalIdp:
    """A stand-in for the hospital's OIDC provider: a real EC key, its JWKS in a file."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "hospital-key-1"
        jwk = json.loads(ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, alg="ES256", use="sig")
        self.jwks_file = folder / "hospital-jwks.json"
        self.jwks_file.write_text(json.dumps({"keys": [jwk]}))

    def token(self, key: ec.EllipticCurvePrivateKey | None = None, **overrides: object) -> str:
        now = int(time.time())
        claims = {
            "iss": HOSPITAL_IDP,
            "sub": "u-1234",
            "aud": "imaging-connector",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "realm_access": {"roles": ["dpo", "offline_access"]},
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def idp(tmp_path: Path) -> HospitalIdp:
    return HospitalIdp(tmp_path)


@pytest.fixture
def hospital_client(tmp_path: Path, idp: HospitalIdp) -> Iterator[TestClient]:
    settings = load_settings(
        data_dir=tmp_path / "data",
        trusted_issuers=[
            {"issuer": HOSPITAL_IDP, "jwks_file": str(idp.jwks_file), "roles_claim": "realm_access.roles"}
        ],
    )
    runtime = build_runtime(settings)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield client
    runtime.close()


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_probes(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "object_store": "ok", "policy_engine": "ok"}


def test_readyz_reports_the_failing_part(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the object folder should be")
    runtime = build_runtime(load_settings(data_dir=tmp_path / "d", objects_dir=blocker))
    with TestClient(create_app(runtime)) as client:
        body = assert_error(client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["object_store"] == "failed"
    assert body["checks"]["database"] == "ok"
    runtime.close()


def test_openapi_documents_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/healthz", "/readyz", "/v1/me", "/v1/config", "/v1/audit", "/v1/audit/verify"} <= set(
        spec["paths"]
    )
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("role", list(Role))
def test_me_lists_what_each_role_may_call(client: TestClient, token_for, role: Role) -> None:  # type: ignore[no-untyped-def]
    me = client.get(
        "/v1/me", headers=bearer(token_for(role, sub=f"{role}-user", organisation="Org", country="IT"))
    )
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["subject"] == f"{role}-user"
    assert body["roles"] == [role.value]
    assert body["country"] == "IT"
    routes = {(item["method"], item["path"]) for item in body["may_call"]}
    assert ("GET", "/v1/audit") in routes if role is Role.DPO else ("GET", "/v1/audit") not in routes
    assert (
        ("GET", "/v1/config") in routes
        if role in {Role.DPO, Role.STEWARD}
        else ("GET", "/v1/config") not in routes
    )


def test_wrong_role_gets_403_with_a_reason_and_is_audited(client: TestClient, token_for, runtime) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(
        client.get("/v1/audit", headers=bearer(token_for(Role.RESEARCHER, sub="eve"))), 403, "forbidden_role"
    )
    assert "researcher" in body["detail"] and "dpo" in body["detail"]
    denied = runtime.audit.query(action="auth.denied")
    assert [(e.actor, e.object, e.outcome) for e in denied] == [("eve", "GET /v1/audit", "deny")]


def test_missing_token(client: TestClient) -> None:
    response = client.get("/v1/me")
    assert_error(response, 401, "missing_token")
    assert response.headers["www-authenticate"] == "Bearer"


def test_not_a_bearer_header(client: TestClient) -> None:
    assert_error(
        client.get("/v1/me", headers={"authorization": "Basic YWxpY2U6c2VjcmV0"}), 401, "malformed_token"
    )


def test_garbage_token(client: TestClient) -> None:
    response = client.get("/v1/me", headers=bearer("not.a.jwt"))
    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]


def test_hospital_idp_token_with_keycloak_roles_is_accepted(
    hospital_client: TestClient, idp: HospitalIdp
) -> None:
    response = hospital_client.get("/v1/audit", headers=bearer(idp.token()))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        (
            {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000, "nbf": int(time.time()) - 4000},
            "token_expired",
        ),
        ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid"),
        ({"aud": "some-other-service"}, "wrong_audience"),
        ({"iss": "https://idp.attacker.example"}, "unknown_issuer"),
        ({"sub": None}, "missing_claim"),
        ({"realm_access": {"roles": ["offline_access"]}}, "no_known_role"),
    ],
)
def test_hospital_token_failures_get_401_with_reason(
    hospital_client: TestClient, idp: HospitalIdp, overrides: dict, code: str
) -> None:
    assert_error(hospital_client.get("/v1/me", headers=bearer(idp.token(**overrides))), 401, code)


def test_forged_token_signed_by_another_key(hospital_client: TestClient, idp: HospitalIdp) -> None:
    forged = idp.token(key=ec.generate_private_key(ec.SECP256R1()))
    assert_error(hospital_client.get("/v1/me", headers=bearer(forged)), 401, "invalid_signature")


def test_tampered_dev_token(client: TestClient, token_for) -> None:  # type: ignore[no-untyped-def]
    header, payload, signature = token_for(Role.RESEARCHER).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["roles"] = ["dpo"]
    forged_payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    response = client.get("/v1/audit", headers=bearer(f"{header}.{forged_payload}.{signature}"))
    assert_error(response, 401, "invalid_signature")


def test_malformed_json_body_gets_422_naming_the_problem(client: TestClient, token_for) -> None:  # type: ignore[no-untyped-def]
    headers = {**bearer(token_for(Role.DPO)), "content-type": "application/json"}
    body = assert_error(
        client.post("/v1/audit/export", content=b'{"actor": ', headers=headers), 422, "invalid_request"
    )
    assert "body" in body["detail"]


def test_wrong_field_gets_422_naming_the_field_without_echoing_it(client: TestClient, token_for) -> None:  # type: ignore[no-untyped-def]
    headers = bearer(token_for(Role.DPO))
    body = assert_error(
        client.post("/v1/audit/export", json={"after_seq": "PATIENT^SECRET"}, headers=headers),
        422,
        "invalid_request",
    )
    assert body["fields"][0]["field"] == "body.after_seq"
    assert "PATIENT^SECRET" not in json.dumps(body)
    body = assert_error(
        client.post("/v1/audit/export", json={"surprise": 1}, headers=headers), 422, "invalid_request"
    )
    assert "body.surprise" in body["detail"]
    body = assert_error(client.get("/v1/audit", params={"limit": 0}, headers=headers), 422, "invalid_request")
    assert "query.limit" in body["detail"]


def test_hostile_json_is_refused_whole(client: TestClient, token_for) -> None:  # type: ignore[no-untyped-def]
    headers = {**bearer(token_for(Role.DPO)), "content-type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    refused = client.post("/v1/audit/export", content=deep, headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"] == "json_too_deep"  # refused by a byte scan, before any parser
    huge = b'{"actor": "' + b"a" * 2_000_000 + b'"}'
    assert_error(client.post("/v1/audit/export", content=huge, headers=headers), 413, "payload_too_large")
    assert_error(
        client.post("/v1/audit/export", json={"actor": "a" * 300}, headers=headers), 422, "invalid_request"
    )


def test_unknown_route_and_method_use_the_error_format(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.delete("/healthz"), 405, "method_not_allowed")


def test_request_ids_are_echoed_or_made(client: TestClient) -> None:
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    made = client.get("/healthz", headers={"x-request-id": "bad id\nwith newline"}).headers["x-request-id"]
    assert made != "bad id\nwith newline" and len(made) == 24


def test_audit_api_query_export_verify(client: TestClient, token_for, runtime) -> None:  # type: ignore[no-untyped-def]
    runtime.audit.record("alice", "dataset.read", "ds-1", "allow", reasons=["ok"])
    headers = bearer(token_for(Role.DPO, sub="dpo-1"))
    page = client.get("/v1/audit", params={"actor": "alice"}, headers=headers).json()
    assert [e["object"] for e in page["entries"]] == ["ds-1"]
    exported = client.post("/v1/audit/export", json={"action": "dataset.*"}, headers=headers)
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["actor"] for line in exported.text.splitlines()] == ["alice"]
    verdict = client.get("/v1/audit/verify", headers=headers).json()
    assert verdict["ok"] is True
    # The DPO's own reading is on the record.
    assert {e.action for e in runtime.audit.query(actor="dpo-1")} >= {"audit.query", "audit.export"}


def test_config_route_masks_secrets(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url.replace("postgres@", "postgres:topsecret@")
    runtime = build_runtime(load_settings(data_dir=tmp_path, database_url=url))
    with TestClient(create_app(runtime)) as client:
        token = runtime.dev_issuer.issue("steward-1", ["steward"])
        body = client.get("/v1/config", headers=bearer(token)).text
    assert "topsecret" not in body and "***" in body
    runtime.close()


def test_app_refuses_a_route_without_declared_roles() -> None:
    app = FastAPI()

    @app.get("/v1/oops")
    def oops() -> dict:
        return {}

    with pytest.raises(RuntimeError, match="/v1/oops"):
        assert_every_route_declares_roles(app.routes)


def test_no_request_can_make_the_service_log_a_token(client: TestClient, token_for) -> None:  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    token = token_for(Role.RESEARCHER)
    try:
        client.get("/v1/audit", headers=bearer(token))  # 403, audited and logged
        client.get(f"/v1/me?access_token={token}")  # token in the query string
        client.get("/v1/me", headers=bearer(token[:-4] + "abcd"))  # forged: logged as a failure
        client.post("/v1/audit/export", content=json.dumps({"actor": token}), headers=bearer(token))
        client.get(f"/v1/{token}")  # token in the path: 404 access line
        logging.getLogger("connector.test").warning("caller sent %s", token)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    assert output.count("\n") >= 5
    assert token not in output
    assert token.split(".")[2] not in output  # not even the signature part
    assert "[REDACTED TOKEN]" in output
