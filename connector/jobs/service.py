"""Submitting, reading and cancelling jobs.

A submission is refused before anything is stored when its package is malformed or its
signature does not verify against a registered team key; it is recorded as denied, with the
policy's reasons, when the access policy says no; otherwise the package is kept (content
addressed) and the job queued. Every outcome is audited with the model digest, the cohort hash
and the policy version. Results are for their submitter only.
"""

from __future__ import annotations

import hashlib
import json
import uuid

from sqlalchemy import select, update

from connector.audit.log import utc_now_text
from connector.compute.cohort_data import CohortFilter, runnable_studies, select_studies
from connector.compute.package import PackageError, read_package
from connector.compute.package_signing import SignatureError, TeamKeyRegistry, verify_package_signature
from connector.identity.principal import Principal
from connector.jobs.failures import MODEL_FAILURES
from connector.jobs.models import Job
from connector.jobs.requests import JobRequest
from connector.jobs.schemas import FINAL_STATES, JobRead, JobState
from connector.runtime import Runtime


class JobRefused(Exception):
    """The submission is malformed (package, signature, request); nothing was stored."""

    def __init__(self, code: str, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.code, self.problems = code, problems


class UnknownJob(LookupError):
    """No such job, or not one the caller may see (the same answer, so ids cannot be probed)."""


def _reasons_of(job: Job) -> list[str]:
    # A failure the model could cause is shown as its fixed sentence whatever the row holds, so a
    # row written before failures were fixed sentences cannot carry a model's text out either.
    if job.state == JobState.FAILED and job.error_code in MODEL_FAILURES:
        return [MODEL_FAILURES[job.error_code]]
    return [str(reason) for reason in json.loads(job.reasons)]


def view_of(job: Job) -> JobRead:
    return JobRead(
        id=job.id,
        state=JobState(job.state),
        dataset=job.dataset,
        purpose=job.purpose,
        model=job.model,
        package_digest=job.package_digest,
        reasons=tuple(_reasons_of(job)),
        error_code=job.error_code,
        policy_version=job.policy_version,
        cohort_size=job.cohort_size,
        studies_total=job.studies_total,
        studies_done=job.studies_done,
        studies_skipped=job.studies_skipped,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        has_result=job.result is not None,
    )


def cohort_hash(dataset: str, study_uids: list[str]) -> str:
    """A digest naming exactly which studies a job ran on (audited; reveals none of them)."""
    digest = hashlib.sha256(dataset.encode() + b"\x00")
    for uid in sorted(study_uids):
        digest.update(uid.encode() + b"\x00")
    return digest.hexdigest()


def cohort_patients(
    runtime: Runtime, dataset: str, cohort: CohortFilter, modalities: list[str] | None = None
) -> int:
    """Patients with a study matching the filter, before consent (the policy then excludes); with
    `modalities` (the manifest's), only patients with a study the model can read count."""
    studies = select_studies(runtime, dataset, cohort, None)
    if modalities is not None:
        studies = runnable_studies(runtime, dataset, studies, modalities)
    return len({study.pseudonym for study in studies})


def submit(
    runtime: Runtime, principal: Principal, request: JobRequest, package_bytes: bytes, signature: str
) -> JobRead:
    """Check, decide, store and queue one job; JobRefused when the submission itself is unusable."""
    try:
        package = read_package(package_bytes)
    except PackageError as exc:
        raise JobRefused("invalid_package", exc.problems) from None
    try:
        signed = verify_package_signature(package_bytes, signature, TeamKeyRegistry(runtime.sessions))
    except SignatureError as exc:
        raise JobRefused(exc.code, [exc.detail]) from None
    if not principal.organisation or not principal.country:
        raise JobRefused(
            "incomplete_identity",
            ["your token must name your organisation and country (claims org, country)"],
        )
    agreement_id = _agreement_of(runtime, principal, request)
    cohort = request.cohort.to_filter()
    document = {
        "action": "access",
        "dataset": request.dataset,
        "purpose": request.purpose,
        "requester": {
            "id": principal.subject,
            "organisation": principal.organisation,
            "country": principal.country,
        },
        "permit": request.permit,
        "cohort": {
            "size": cohort_patients(runtime, request.dataset, cohort, list(package.manifest.input.modalities))
        },
    }
    prepared = runtime.policy.access_input(document)
    if isinstance(prepared, list):
        raise JobRefused("invalid_request", prepared)
    roles = sorted(str(role) for role in principal.roles)
    decision = runtime.policy.decide("access", prepared, principal.subject, roles)
    claims = prepared.get("permit_check", {}).get("claims", {})
    job = Job(
        id=uuid.uuid4().hex,
        submitter=principal.subject,
        organisation=principal.organisation,
        country=principal.country,
        dataset=request.dataset,
        purpose=request.purpose,
        cohort_filter=json.dumps(request.cohort.model_dump(), sort_keys=True),
        access_input=json.dumps(prepared, sort_keys=True),
        permit_expires=claims.get("expires") if isinstance(claims.get("expires"), int) else None,
        package_key=f"models/{package.digest}.zip",
        package_digest=package.digest,
        team=signed.team,
        team_key_id=signed.key_id,
        model=f"{package.manifest.name}@{package.manifest.version}",
        batch_size=request.batch_size,
        state=JobState.QUEUED if decision.allow else JobState.DENIED,
        reasons=json.dumps(list(decision.reasons)),
        error_code="" if decision.allow else "access_denied",
        policy_version=decision.policy_version or "",
        created_at=utc_now_text(),
        finished_at="" if decision.allow else utc_now_text(),
        agreement_id=agreement_id,
    )
    if decision.allow:
        # Content-addressed: the same package submitted twice is stored once.
        runtime.objects.put(job.package_key, package_bytes)
    with runtime.sessions() as session, session.begin():
        session.add(job)
    runtime.audit.record(
        principal.subject,
        "job.submit",
        job.id,
        "allow" if decision.allow else "deny",
        reasons=list(decision.reasons),
        roles=roles,
        details={
            "dataset": job.dataset,
            "purpose": job.purpose,
            "model_digest": job.package_digest,
            "team": job.team,
            "policy_version": job.policy_version,
            "obligations": list(decision.obligations),
        },
    )
    return view_of(job)


def _agreement_of(runtime: Runtime, principal: Principal, request: JobRequest) -> str:
    """The DSP agreement a peer's job runs under ("" for a local researcher); JobRefused when the
    job asks for another dataset or purpose than the agreement grants."""
    from connector.dataspace import access_tokens
    from connector.identity.errors import ForbiddenError

    if not access_tokens.is_agreement_token(runtime, principal):
        return ""

    try:
        access = access_tokens.check(runtime, principal, "jobs")
    except ForbiddenError as exc:
        raise JobRefused("not_under_agreement", [exc.detail]) from None
    problems = []
    if request.dataset != access.dataset:
        problems.append(f"the contract agreement covers dataset {access.dataset}, not {request.dataset}")
    if request.purpose != access.purpose:
        problems.append(f"the contract agreement covers purpose {access.purpose}, not {request.purpose}")
    if problems:
        raise JobRefused("not_under_agreement", problems)
    return access.agreement_id


def _scope(runtime: Runtime, principal: Principal) -> str:
    """The agreement a caller's jobs run under: a peer's token sees only that agreement's jobs, a
    local researcher only jobs under none."""
    from connector.dataspace.access_tokens import is_agreement_token

    if is_agreement_token(runtime, principal):
        return str(principal.claims.get("agreement", ""))
    return ""


def _bound(runtime: Runtime, job: Job, principal: Principal | None) -> bool:
    return principal is None or job.agreement_id == _scope(runtime, principal)


def _owned(runtime: Runtime, job_id: str, principal: Principal | None) -> Job:
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        if (
            job is None
            or (principal is not None and job.submitter != principal.subject)
            or not _bound(runtime, job, principal)
        ):
            raise UnknownJob(f"no job {job_id!r} of yours")
        session.expunge(job)
        return job


def get_job(runtime: Runtime, job_id: str, principal: Principal | None = None) -> JobRead:
    """The job's status; with a principal, only when they submitted it."""
    return view_of(_owned(runtime, job_id, principal))


def list_jobs(runtime: Runtime, principal: Principal | None = None, limit: int = 100) -> list[JobRead]:
    with runtime.sessions() as session:
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if principal is not None:
            query = query.where(
                Job.submitter == principal.subject, Job.agreement_id == _scope(runtime, principal)
            )
        return [view_of(job) for job in session.execute(query).scalars()]


def cancel_job(runtime: Runtime, job_id: str, principal: Principal) -> JobRead:
    """A queued job is cancelled at once; a running one at its next batch (nothing released)."""
    _owned(runtime, job_id, principal)
    with runtime.sessions() as session, session.begin():
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.QUEUED)
            .values(
                state=JobState.CANCELLED,
                finished_at=utc_now_text(),
                reasons=json.dumps(["cancelled by its submitter"]),
            )
        )
        session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING).values(cancel_requested=True)
        )
    runtime.audit.record(principal.subject, "job.cancel", job_id, "success")
    return get_job(runtime, job_id, principal)


def result_of(runtime: Runtime, job_id: str, principal: Principal) -> str:
    """The signed result (a JWS) of a finished job, for its submitter only."""
    job = _owned(runtime, job_id, principal)
    if job.result is None:
        state = job.state if job.state in FINAL_STATES else f"{job.state} (not finished)"
        raise UnknownJob(f"job {job_id} has no result: it is {state}")
    runtime.audit.record(principal.subject, "job.result.download", job_id, "success")
    return job.result
