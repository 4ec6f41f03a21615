"""The DPO's policy tools over HTTP, the consent registry, permit revocations, access decisions.

Bundles travel as `{"files": {"connector/x.rego": "...", "data.json": "..."}}`. Every decision
is made by the policy service (audited there); this module only translates HTTP to it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from connector.api.errors import ApiError
from connector.api.security import requires, runtime_of
from connector.identity.principal import Principal
from connector.identity.roles import Role
from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.checker import check_bundle
from connector.policy.consent import STATUSES, ConsentImportError, list_entries, rows_from_json
from connector.policy.engine import PolicyEngineError
from connector.policy.testing import run_tests

router = APIRouter(prefix="/v1", tags=["policies"])
Dpo = Annotated[Principal, Depends(requires(Role.DPO))]


class BundleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: dict[str, str] = Field(description="Bundle files by relative path: *.rego and data.json.")
    note: str = Field(default="", max_length=2000, description="Why this version (activation only).")

    def bundle(self) -> PolicyBundle:
        if not any(name.endswith(".rego") for name in self.files):
            raise ApiError(400, "invalid_bundle", "the bundle holds no .rego file")
        bad = [name for name in self.files if name.startswith("/") or ".." in name.split("/")]
        if bad:
            raise ApiError(400, "invalid_bundle", f"file names must be relative paths: {bad[0][:100]!r}")
        return PolicyBundle(dict(self.files))


class DecisionOut(BaseModel):
    allow: bool
    reasons: list[str]
    obligations: list[str]
    policy_version: str | None


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class ConsentImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[dict[str, Any]] = Field(max_length=200_000)
    erase: bool = False
    source: str = Field(default="api", max_length=200)


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permit_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/policy/check", summary="Compile and lint a bundle (DPO)")
def policy_check(body: BundleBody, _: Dpo) -> dict[str, Any]:
    bundle = body.bundle()
    findings = check_bundle(bundle)
    return {"digest": bundle.digest, "findings": [finding.to_json() for finding in findings]}


@router.post("/policy/test", summary="Run a bundle's Rego tests with coverage (DPO)")
def policy_test(body: BundleBody, _: Dpo) -> dict[str, Any]:
    try:
        return run_tests(body.bundle()).to_json()
    except (PolicyEngineError, BundleError) as exc:
        raise ApiError(400, "invalid_bundle", f"the bundle does not compile: {exc}") from None


@router.post("/policy/decide", response_model=DecisionOut, summary="Decide on any request (DPO)")
def policy_decide(
    request: Request,
    principal: Dpo,
    document: Annotated[Any, Body(description="An access, release or api request.")],
) -> dict[str, Any]:
    decision = runtime_of(request).policy.decide_any(document, principal.subject, principal.roles)
    return decision.to_json()


@router.post("/access/decide", response_model=DecisionOut, summary="Would my access request be allowed?")
def access_decide(
    request: Request,
    principal: Annotated[Principal, Depends(requires(Role.RESEARCHER, Role.DPO))],
    document: Annotated[Any, Body(description="A request in the access-request format.")],
) -> dict[str, Any]:
    service = runtime_of(request).policy
    requester = document.get("requester") if isinstance(document, dict) else None
    claimed = requester.get("id") if isinstance(requester, dict) else None
    if Role.DPO not in principal.roles and claimed != principal.subject:
        raise ApiError(
            403, "not_your_request", "requester.id must be the caller's own id (the token subject)"
        )
    return service.decide_access(document, principal.subject, principal.roles).to_json()


@router.post("/policy/activate", summary="Check, test and activate a bundle (DPO)")
def policy_activate(request: Request, body: BundleBody, principal: Dpo) -> dict[str, Any]:
    outcome = runtime_of(request).policy.activate(body.bundle(), principal.subject, body.note)
    if not outcome.activated:
        raise ApiError(409, "policy_refused", "; ".join(outcome.reasons), outcome=outcome.to_json())
    return outcome.to_json()


@router.post("/policy/diff", summary="Replay recent decisions under a draft bundle (DPO)")
def policy_diff(
    request: Request, body: BundleBody, _: Dpo, limit: Annotated[int, Query(ge=1, le=100_000)] = 200
) -> dict[str, Any]:
    return runtime_of(request).policy.diff(body.bundle(), limit).to_json()


@router.get("/policy/history", summary="Activated versions, newest first (DPO)")
def policy_history(request: Request, _: Dpo) -> list[dict[str, Any]]:
    return [row.to_json() for row in runtime_of(request).policy.history()]


@router.get("/policy/active", summary="The policy version in force")
def policy_active(
    request: Request, _: Annotated[Principal, Depends(requires(Role.DPO, Role.STEWARD, Role.RESEARCHER))]
) -> dict[str, Any]:
    active = runtime_of(request).policy.active()
    if active is None:
        raise ApiError(404, "no_policy", "no policy is active")
    return active.to_json()


@router.post("/policy/rollback", summary="Activate an earlier version again (DPO)")
def policy_rollback(request: Request, body: Rollback, principal: Dpo) -> dict[str, Any]:
    try:
        outcome = runtime_of(request).policy.rollback(body.version, principal.subject)
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    if not outcome.activated:
        raise ApiError(409, "policy_refused", "; ".join(outcome.reasons), outcome=outcome.to_json())
    return outcome.to_json()


@router.get("/consent", summary="Consent registry entries, pseudonyms only (DPO)")
def consent_list(
    request: Request,
    _: Dpo,
    dataset: str | None = None,
    status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[dict[str, Any]]:
    return list_entries(runtime_of(request).sessions, dataset, status, limit)


@router.post("/consent/import", summary="Import opt-outs and consents, all or nothing (DPO)")
def consent_import(request: Request, body: ConsentImportBody, principal: Dpo) -> dict[str, Any]:
    from connector.policy.optout import import_consent

    try:
        outcome = import_consent(
            runtime_of(request), rows_from_json(body.entries), body.source, principal.subject, body.erase
        )
    except ConsentImportError as exc:
        raise ApiError(400, "invalid_consent_import", f"nothing imported: {exc}") from None
    return outcome.to_json()


@router.get("/permits/revoked", summary="Revoked data permits (DPO, HDAB)")
def permits_revoked(
    request: Request, _: Annotated[Principal, Depends(requires(Role.DPO, Role.HDAB))]
) -> list[dict[str, str]]:
    return runtime_of(request).policy.revoked_permits()


@router.post("/permits/revoked", status_code=201, summary="Revoke a data permit (DPO, HDAB)")
def permits_revoke(
    request: Request,
    body: Revocation,
    principal: Annotated[Principal, Depends(requires(Role.DPO, Role.HDAB))],
) -> dict[str, str]:
    runtime_of(request).policy.revoke_permit(body.permit_id, body.reason, principal.subject)
    return {"permit_id": body.permit_id, "status": "revoked"}
