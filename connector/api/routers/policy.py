"""The DPO's policy tools over HTTP, the consent registry, permit revocations, access decisions.

Bundles travel as `{"files": {"connector/x.rego": "...", "data.json": "..."}}`. Every decision
is made by the policy service (audited there); this module only translates HTTP to it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from connector.api.errors import ApiError
from connector.api.security import requires, runtime_of
from connector.crypto.dataset_secrets import DATASET_NAME_PATTERN
from connector.identity.principal import Principal
from connector.identity.roles import Role
from connector.policy import sandbox
from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.consent import STATUSES, ConsentImportError, list_entries, rows_from_json
from connector.policy.engine import PolicyEngineError
from connector.policy.service import Activation, ApprovalError

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


class ApprovalBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=2000, description="Why approved or rejected (audited).")


def _timeout(exc: sandbox.EvaluationTimeout) -> ApiError:
    return ApiError(422, "evaluation_timeout", str(exc))


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)


class ConsentImportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[dict[str, Any]] = Field(
        max_length=200_000,
        description="Objects with `status` (opted-out, withdrawn, consented) and either `patient_id` "
        "(optional `issuer`, default: the setting default_patient_id_issuer; optional `dataset`, default: "
        "every dataset) or `dataset` + `pseudonym`. Errors name the entry by its index (row 0 is the first).",
    )
    erase: bool = False
    strict: bool | None = Field(
        default=None, description="Refuse the whole import when an entry matches no patient (default: erase)."
    )
    source: str = Field(default="api", max_length=200)


class ReadmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(pattern=DATASET_NAME_PATTERN)
    pseudonym: str = Field(min_length=1, max_length=64, description="The patient's pseudonym there.")
    reason: str = Field(min_length=1, max_length=500, description="Why they may come back (audited).")


class Revocation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    permit_id: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/policy/check", summary="Compile and lint a bundle (DPO)")
def policy_check(request: Request, body: BundleBody, _: Dpo) -> dict[str, Any]:
    bundle = body.bundle()
    try:
        findings = sandbox.check(bundle, runtime_of(request).policy.guard.eval_timeout)
    except sandbox.EvaluationTimeout as exc:
        raise _timeout(exc) from None
    except PolicyEngineError as exc:
        raise ApiError(400, "invalid_bundle", f"the bundle cannot be checked: {exc}") from None
    return {"digest": bundle.digest, "findings": [finding.to_json() for finding in findings]}


@router.post("/policy/test", summary="Run a bundle's Rego tests with coverage (DPO)")
def policy_test(request: Request, body: BundleBody, _: Dpo) -> dict[str, Any]:
    try:
        return sandbox.test(body.bundle(), runtime_of(request).policy.guard.eval_timeout).to_json()
    except sandbox.EvaluationTimeout as exc:
        raise _timeout(exc) from None
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


def _activation_answer(outcome: Activation, response: Response) -> dict[str, Any]:
    """An activation or rollback: 202 while it waits for a second DPO, 409 with the reasons when refused."""
    if outcome.pending is not None:
        response.status_code = 202
    elif not outcome.activated:
        raise ApiError(409, "policy_refused", "; ".join(outcome.reasons), outcome=outcome.to_json())
    return outcome.to_json()


@router.post(
    "/policy/activate",
    summary="Check, test and activate a bundle (DPO); in production 202: a second DPO must approve",
)
def policy_activate(request: Request, response: Response, body: BundleBody, principal: Dpo) -> dict[str, Any]:
    outcome = runtime_of(request).policy.activate(body.bundle(), principal.subject, body.note)
    return _activation_answer(outcome, response)


@router.post("/policy/diff", summary="Replay recent decisions under a draft bundle (DPO)")
def policy_diff(
    request: Request, body: BundleBody, _: Dpo, limit: Annotated[int, Query(ge=1, le=100_000)] = 200
) -> dict[str, Any]:
    try:
        return runtime_of(request).policy.diff(body.bundle(), limit).to_json()
    except sandbox.EvaluationTimeout as exc:
        raise _timeout(exc) from None
    except (PolicyEngineError, BundleError) as exc:
        raise ApiError(400, "invalid_bundle", f"the draft cannot be replayed: {exc}") from None


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
def policy_rollback(request: Request, response: Response, body: Rollback, principal: Dpo) -> dict[str, Any]:
    try:
        outcome = runtime_of(request).policy.rollback(body.version, principal.subject)
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _activation_answer(outcome, response)


@router.get("/policy/approvals", summary="Activations awaiting a second DPO (DPO)")
def policy_approvals(
    request: Request,
    _: Dpo,
    status: Annotated[str, Query(pattern="^(pending|approved|rejected|refused|all)$")] = "pending",
) -> list[dict[str, Any]]:
    rows = runtime_of(request).policy.pending(None if status == "all" else status)
    return [row.to_json() for row in rows]


def _approval_error(exc: ApprovalError) -> ApiError:
    return ApiError(403 if exc.code == "same_dpo" else 409, exc.code, str(exc))


@router.post("/policy/approvals/{approval_id}", summary="Approve another DPO's pending activation (DPO)")
def policy_approve(request: Request, approval_id: int, body: ApprovalBody, principal: Dpo) -> dict[str, Any]:
    try:
        outcome = runtime_of(request).policy.approve(approval_id, principal.subject, body.note)
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ApprovalError as exc:
        raise _approval_error(exc) from None
    if not outcome.activated:
        raise ApiError(409, "policy_refused", "; ".join(outcome.reasons), outcome=outcome.to_json())
    return outcome.to_json()


@router.post("/policy/approvals/{approval_id}/reject", summary="Reject a pending activation (DPO)")
def policy_reject(request: Request, approval_id: int, body: ApprovalBody, principal: Dpo) -> dict[str, Any]:
    try:
        return runtime_of(request).policy.reject(approval_id, principal.subject, body.note).to_json()
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ApprovalError as exc:
        raise _approval_error(exc) from None


@router.get("/consent", summary="Consent registry entries, pseudonyms only (DPO)")
def consent_list(
    request: Request,
    _: Dpo,
    dataset: Annotated[str | None, Query(pattern=DATASET_NAME_PATTERN)] = None,
    status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
) -> list[dict[str, Any]]:
    return list_entries(runtime_of(request).sessions, dataset, status, limit)


@router.post("/consent/import", summary="Import opt-outs and consents, all or nothing, per-row report (DPO)")
def consent_import(request: Request, body: ConsentImportBody, principal: Dpo) -> dict[str, Any]:
    from connector.policy.optout import UnmatchedRows, import_consent

    try:
        outcome = import_consent(
            runtime_of(request),
            rows_from_json(body.entries),
            body.source,
            principal.subject,
            body.erase,
            body.strict,
            first_row=0,
        )
    except UnmatchedRows as exc:
        raise ApiError(
            422,
            "consent_rows_unmatched",
            f"nothing imported: {exc}",
            rows=[row.to_json() for row in exc.rows],
            unmatched_rows=[row.row for row in exc.rows if not row.matched],
        ) from None
    except ConsentImportError as exc:
        raise ApiError(422, "invalid_consent_import", f"nothing imported: {exc}") from None
    return outcome.to_json()


@router.get("/consent/refused", summary="Patients ingest refuses (shredded or erased), pseudonyms only (DPO)")
def consent_refused(
    request: Request, _: Dpo, dataset: Annotated[str | None, Query(pattern=DATASET_NAME_PATTERN)] = None
) -> list[dict[str, str]]:
    from dataclasses import asdict

    from connector.datasets.refusals import list_refusals

    return [asdict(row) for row in list_refusals(runtime_of(request).sessions, dataset)]


@router.post("/consent/readmit", summary="Lift the refusal of an erased patient, audited (DPO)")
def consent_readmit(request: Request, body: ReadmitBody, principal: Dpo) -> dict[str, str]:
    from dataclasses import asdict

    from connector.datasets.refusals import readmit

    try:
        lifted = readmit(runtime_of(request), body.dataset, body.pseudonym, body.reason, principal.subject)
    except LookupError as exc:
        raise ApiError(404, "not_refused", str(exc)) from None
    except ValueError as exc:
        raise ApiError(422, "reason_required", str(exc)) from None
    return asdict(lifted)


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
