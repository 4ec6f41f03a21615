"""Compute-to-data over HTTP: researchers submit jobs (signed model package + request), follow
them, cancel them and download their signed results; stewards and DPOs register the teams' keys;
anyone may fetch the connector's public key to verify a result.

Every decision is made in connector.jobs (the policy decides access and egress); this module only
translates HTTP to it. A submitter sees only their own jobs; another id answers 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from connector.api.errors import ApiError
from connector.api.security import public, requires, runtime_of
from connector.compute.package_signing import KeyRegistryError, TeamKeyRegistry
from connector.identity.principal import Principal
from connector.identity.roles import Role
from connector.jobs import service
from connector.jobs.requests import JobRequest
from connector.jobs.schemas import JobRead, JobState
from connector.policy.requests import problems

router = APIRouter(tags=["compute-to-data"])
Researcher = Annotated[Principal, Depends(requires(Role.RESEARCHER))]
KeyKeeper = Annotated[Principal, Depends(requires(Role.STEWARD, Role.DPO))]


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobRead,
    summary="Submit a job: a signed model package and a request (dataset, purpose, permit, cohort)",
)
async def submit_job(
    principal: Researcher,
    request: Request,
    job: Annotated[str, Form(max_length=20_000, description="The job request as JSON.")],
    signature: Annotated[str, Form(max_length=8192, description="The team's JWS over the package.")],
    package: Annotated[UploadFile, File(description="The model package (zip).")],
) -> Any:
    runtime = runtime_of(request)
    try:
        parsed = JobRequest.model_validate_json(job)
    except ValidationError as exc:
        raise ApiError(
            422, "invalid_request", "the job request has problems", problems=problems(exc)
        ) from None
    package_bytes = await package.read(runtime.settings.job_package_max_bytes + 1)
    if len(package_bytes) > runtime.settings.job_package_max_bytes:
        raise ApiError(413, "payload_too_large", "the model package is larger than the connector accepts")
    try:
        view = await run_in_threadpool(service.submit, runtime, principal, parsed, package_bytes, signature)
    except service.JobRefused as exc:
        raise ApiError(422, exc.code, "the submission was refused", problems=exc.problems) from None
    if view.state == JobState.DENIED:
        raise ApiError(403, "access_denied", "; ".join(view.reasons), job=view.id, reasons=list(view.reasons))
    return view


@router.get("/v1/jobs", response_model=list[JobRead], summary="Your jobs, newest first")
def list_jobs(
    request: Request, principal: Researcher, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[JobRead]:
    return service.list_jobs(runtime_of(request), principal, limit)


@router.get("/v1/jobs/{job_id}", response_model=JobRead, summary="A job's state and progress")
def get_job(request: Request, job_id: str, principal: Researcher) -> JobRead:
    try:
        return service.get_job(runtime_of(request), job_id[:64], principal)
    except service.UnknownJob as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobRead, summary="Cancel a job (nothing is released)")
def cancel_job(request: Request, job_id: str, principal: Researcher) -> JobRead:
    try:
        return service.cancel_job(runtime_of(request), job_id[:64], principal)
    except service.UnknownJob as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="The signed result (a JWS, EdDSA; verify with `connector verify-result`)",
    response_class=Response,
)
def get_result(request: Request, job_id: str, principal: Researcher) -> Response:
    try:
        token = service.result_of(runtime_of(request), job_id[:64], principal)
    except service.UnknownJob as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return Response(token, media_type="application/jwt")


@router.get(
    "/v1/connector/keys",
    dependencies=[Depends(public())],
    summary="The connector's public signing key (JWKS), to verify results",
)
def connector_keys(request: Request) -> dict[str, Any]:
    key = runtime_of(request).signing_key
    return {"keys": [{**key.public_jwk, "kid": key.key_id, "alg": "EdDSA", "use": "sig"}]}


class TeamKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: str = Field(min_length=1, max_length=200)
    public_key: str | dict[str, Any] = Field(description="PEM text or a public JWK (EdDSA or ES256).")


class TeamKeyOut(BaseModel):
    team: str
    key_id: str
    algorithm: str
    registered_at: str
    registered_by: str
    revoked_at: str | None


def _key_out(info: Any) -> TeamKeyOut:
    return TeamKeyOut(
        team=info.team,
        key_id=info.key_id,
        algorithm=info.algorithm,
        registered_at=str(info.registered_at),
        registered_by=info.registered_by,
        revoked_at=str(info.revoked_at) if info.revoked_at else None,
    )


@router.post("/v1/teams/keys", response_model=TeamKeyOut, summary="Register an AI team's package-signing key")
def register_team_key(request: Request, body: TeamKeyBody, principal: KeyKeeper) -> TeamKeyOut:
    runtime = runtime_of(request)
    registry = TeamKeyRegistry(runtime.sessions)
    try:
        key_id = registry.register(body.team, body.public_key, principal.subject)
    except (KeyRegistryError, ValueError) as exc:
        raise ApiError(422, "invalid_key", str(exc)) from None
    runtime.audit.record(
        principal.subject, "team_key.register", key_id, "success", details={"team": body.team}
    )
    info = registry.get(key_id)
    return _key_out(info)


@router.get("/v1/teams/keys", response_model=list[TeamKeyOut], summary="Registered team keys")
def list_team_keys(request: Request, _: KeyKeeper) -> list[TeamKeyOut]:
    return [_key_out(info) for info in TeamKeyRegistry(runtime_of(request).sessions).list()]
