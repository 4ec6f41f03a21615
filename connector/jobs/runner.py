"""Running jobs: claim one from the shared queue, decide again at start, run the model in its
sandbox over the consented cohort, apply the egress policy, sign and keep the result.

The access policy decides again when the job starts (opt-outs, revocations and the cohort may
have changed since it was queued); patients who opt out while the job runs are skipped from then
on and their outputs dropped at the end. Any failure ends the job with a reason and releases
nothing: there are no partial results. Several workers (threads, processes, nodes) share the
queue: a claim is a compare-and-set on the job's state, so no job runs twice.

k holds for what the model sees: the cohort counted at start is the patients whose studies hold
an image of the manifest's modalities (after opt-outs), and a release counts only the patients
whose studies gave an output. Nothing the model writes leaves as text: a failure is told as a
code and a fixed sentence (connector.jobs.failures), in the job's reasons and in the audit trail
alike. A release is charged to its team's budget of released numbers for the dataset in the same
transaction that marks the job succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from connector.audit.log import utc_now_text
from connector.compute.cohort_data import (
    CohortFilter,
    CohortStudy,
    StudyInput,
    cohort_inputs,
    runnable_studies,
    select_studies,
)
from connector.compute.inference import ModelOutputError, run_model
from connector.compute.package import PackageError, package_digest, read_package
from connector.compute.sandbox import SandboxedModel, SandboxError, SandboxLimits
from connector.db.engine import rows_matched
from connector.jobs.failures import error_reference, model_failure, sandbox_failure
from connector.jobs.models import Job, ReleaseBudget
from connector.jobs.results import DEFAULT_DECIMALS, build_result, sign_result
from connector.jobs.schemas import JobState
from connector.jobs.service import cohort_hash
from connector.runtime import Runtime

log = logging.getLogger("connector.jobs")

LEASE_SECONDS = 120.0
CONSENT_RECHECK_SECONDS = 2.0
BUDGET_RETRIES = 5  # a release re-decided when another job of the team charged the budget meanwhile


class JobFailure(Exception):
    """A job ends here; its reasons are ours or the policy's, never text the model wrote."""

    def __init__(self, state: JobState, code: str, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.state, self.code, self.reasons = state, code, reasons


@dataclass
class _RunNotes:
    """What a run learnt that its final audit entry records (never model-written text)."""

    isolation: dict[str, bool] | None = None
    runnable_patients: int | None = None
    budget: dict[str, Any] = field(default_factory=dict)

    def details(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.isolation is not None:
            found["isolation"] = self.isolation
        if self.runnable_patients is not None:
            found["runnable_patients"] = self.runnable_patients
        if self.budget:
            found["budget"] = self.budget
        return found


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


def claim_next(runtime: Runtime, worker: str) -> str | None:
    """Take the oldest queued job for `worker` (None when the queue is empty)."""
    with runtime.sessions() as session:
        candidates = list(
            session.execute(
                select(Job.id).where(Job.state == JobState.QUEUED).order_by(Job.created_at).limit(5)
            ).scalars()
        )
    for job_id in candidates:
        with runtime.sessions() as session, session.begin():
            claimed = rows_matched(session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    worker=worker[:100],
                    started_at=utc_now_text(),
                    lease_until=time.time() + LEASE_SECONDS,
                )
            ))
        if claimed == 1:
            return job_id
    return None


def fail_abandoned(runtime: Runtime) -> int:
    """Jobs whose worker stopped renewing its lease (it died): failed, never re-run half-done."""
    with runtime.sessions() as session, session.begin():
        return rows_matched(session.execute(
            update(Job)
            .where(Job.state == JobState.RUNNING, Job.lease_until < time.time())
            .values(
                state=JobState.FAILED,
                error_code="worker_lost",
                reasons=json.dumps(["the worker running this job stopped; nothing was released"]),
                finished_at=utc_now_text(),
            )
        ))


def _update(runtime: Runtime, job_id: str, **values: Any) -> None:
    with runtime.sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING).values(**values))


def finish_job(
    runtime: Runtime,
    job_id: str,
    state: JobState,
    code: str,
    reasons: list[str],
    result: str | None = None,
    *,
    details: dict[str, Any] | None = None,
    charge: tuple[str, str, int, int] | None = None,
) -> bool:
    """End a running job (once): its final state, reasons and result, audited. False when the job
    had already ended (a lost worker, another executor), so a late finisher never overwrites it.

    `charge` (team, dataset, used as the policy saw it, numbers) charges the release budget in the
    same transaction: _BudgetMoved (and nothing written) when another release charged it first."""
    with runtime.sessions() as session, session.begin():
        if charge is not None:
            _charge_budget(session, *charge)
        ended = rows_matched(session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.RUNNING)
            .values(
                state=state,
                error_code=code,
                reasons=json.dumps(reasons),
                finished_at=utc_now_text(),
                result=result,
            )
        ))
        job = session.get(Job, job_id)
        if ended != 1 and charge is not None:
            session.rollback()  # the job ended elsewhere: released nothing, so charges nothing
    if ended != 1 or job is None:
        return False
    runtime.audit.record(
        f"worker:{job.worker}",
        f"job.{state}",
        job.id,
        "success" if state == JobState.SUCCEEDED else "failure" if state == JobState.FAILED else "deny",
        reasons=reasons[:10],
        details={
            "code": code,
            "model_digest": job.package_digest,
            "cohort_hash": job.cohort_hash,
            **(details or {}),
        },
    )
    return True


class _BudgetMoved(Exception):
    """Another release charged the team's budget after this one was decided: decide again."""


def budget_used(runtime: Runtime, team: str, dataset: str) -> int:
    """Numbers released so far to `team` from `dataset` (0 before the first release)."""
    with runtime.sessions() as session:
        used = session.execute(
            select(ReleaseBudget.used).where(ReleaseBudget.team == team, ReleaseBudget.dataset == dataset)
        ).scalar_one_or_none()
    return int(used or 0)


def _charge_budget(session: Any, team: str, dataset: str, seen: int, numbers: int) -> None:
    # A compare-and-set on what the policy saw: two releases decided on the same `used` cannot
    # both be charged, so the budget holds across workers without a lock held over the decision.
    if seen == 0:
        try:
            with session.begin_nested():
                session.execute(
                    insert(ReleaseBudget).values(
                        team=team, dataset=dataset, used=numbers, releases=1, updated_at=utc_now_text()
                    )
                )
            return
        except IntegrityError:
            pass  # a row exists (possibly still at 0): fall through to the compare-and-set
    charged = session.execute(
        update(ReleaseBudget)
        .where(ReleaseBudget.team == team, ReleaseBudget.dataset == dataset, ReleaseBudget.used == seen)
        .values(
            used=ReleaseBudget.used + numbers, releases=ReleaseBudget.releases + 1, updated_at=utc_now_text()
        )
    ).rowcount
    if charged != 1:
        raise _BudgetMoved()


class _Consent:
    """Who is still in the cohort: re-read from the consent policy every few seconds while a job runs."""

    def __init__(self, runtime: Runtime, dataset: str) -> None:
        self._runtime, self._dataset = runtime, dataset
        self._checked = 0.0
        self.included: set[str] = set()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> set[str]:
        if force or time.monotonic() - self._checked > CONSENT_RECHECK_SECONDS:
            self.included = set(self._runtime.policy.cohort(self._dataset).included)
            self._checked = time.monotonic()
        return self.included


def _audit_decision(runtime: Runtime, job: Job, which: str, decision: Any) -> None:
    # The policy service audits its input; this entry ties the decision to the job's model and cohort.
    runtime.audit.record(
        f"worker:{job.worker}",
        f"job.decision.{which}",
        job.id,
        "allow" if decision.allow else "deny",
        reasons=list(decision.reasons)[:10],
        details={
            "model_digest": job.package_digest,
            "cohort_hash": job.cohort_hash,
            "policy_version": decision.policy_version,
        },
    )


def _decide_at_start(
    runtime: Runtime, job: Job, studies: list[CohortStudy], excluded: int, asked: int, modalities: list[str]
) -> None:
    """The access decision again, on the runnable cohort: `studies` are those the model can read
    (of `asked` consenting patients the filter matched, only these count towards k)."""
    if job.permit_expires is not None and job.permit_expires < time.time():
        raise JobFailure(
            JobState.DENIED, "permit_expired", ["the data permit expired before the job started"]
        )
    patients = len({study.pseudonym for study in studies})
    prepared = json.loads(job.access_input)
    prepared["cohort"]["size"] = patients
    prepared["cohort"]["excluded"] = excluded
    job.cohort_hash = cohort_hash(job.dataset, [study.study_uid for study in studies])
    decision = runtime.policy.decide("access", prepared, f"worker:{job.worker}", ["worker"])
    _audit_decision(runtime, job, "access", decision)
    if not decision.allow:
        reasons = [f"at start: {reason}" for reason in decision.reasons]
        if patients < asked:
            reasons.append(
                f"at start: {patients} of the {asked} patients the cohort query matched have a study of "
                f"modality {', '.join(sorted(modalities))} that the model reads; only they count"
            )
        raise JobFailure(JobState.DENIED, "access_denied", reasons)


def _inputs(
    runtime: Runtime, job: Job, studies: list[CohortStudy], consent: _Consent, spec: Any, dropped: set[str]
) -> Iterator[StudyInput]:
    for study in studies:
        if study.pseudonym not in consent.refresh():
            dropped.add(study.study_uid)  # opted out while the job ran: not read, not counted
            continue
        yield from cohort_inputs(runtime, job.dataset, [study], spec)


def run_job(runtime: Runtime, job_id: str, limits: SandboxLimits) -> str:
    """Run one claimed job to its end; its final state."""
    with runtime.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
    notes = _RunNotes()

    def fail(state: JobState, code: str, sentence: str) -> str:
        finish_job(runtime, job.id, state, code, [sentence], details=notes.details())
        return state

    try:
        _run(runtime, job, limits, notes)
        return JobState.SUCCEEDED
    except JobFailure as exc:
        finish_job(runtime, job.id, exc.state, exc.code, exc.reasons, details=notes.details())
        return exc.state
    except InterruptedError:
        return fail(JobState.CANCELLED, "cancelled", "cancelled by its submitter; nothing was released")
    except SandboxError as exc:
        # The sandbox's detail is never used: only its code, mapped to our own sentence.
        if exc.code == "cancelled":
            return fail(JobState.CANCELLED, "cancelled", "cancelled by its submitter; nothing was released")
        if exc.code == "isolation_unavailable":
            # The connector's own words about this machine (which layers are missing): for the operator.
            log.error("a job's model cannot be confined here", extra={"job": job.id, "reason": exc.detail})
        return fail(JobState.FAILED, *sandbox_failure(exc.code))
    except ModelOutputError:
        return fail(JobState.FAILED, *model_failure("model_output"))
    except PackageError:
        return fail(JobState.FAILED, *model_failure("invalid_package"))
    except Exception as exc:  # a job must end, whatever happened; the worker keeps serving
        # Its text may carry what a model wrote (an exception raised through our code): the
        # operator's log gets a digest to match against a reproduction, never the text.
        log.error("job failed unexpectedly", extra={"job": job.id, "error_reference": error_reference(exc)})
        return fail(JobState.FAILED, *model_failure("internal_error"))


def _run(runtime: Runtime, job: Job, limits: SandboxLimits, notes: _RunNotes) -> None:
    query = CohortFilter(**{name: tuple(values) for name, values in json.loads(job.cohort_filter).items()})
    consent = _Consent(runtime, job.dataset)
    # The package first: its manifest says which modalities the model reads, so which patients count.
    package_bytes = runtime.objects.get(job.package_key)
    if package_digest(package_bytes) != job.package_digest:
        raise JobFailure(
            JobState.FAILED, "package_altered", ["the stored model package does not match its digest"]
        )
    manifest = read_package(package_bytes).manifest
    asked = select_studies(runtime, job.dataset, query, None)
    consenting = [study for study in asked if study.pseudonym in consent.included]
    studies = runnable_studies(runtime, job.dataset, consenting, manifest.input.modalities)
    excluded = len({s.pseudonym for s in asked}) - len({s.pseudonym for s in consenting})
    notes.runnable_patients = len({study.pseudonym for study in studies})
    _decide_at_start(
        runtime,
        job,
        studies,
        excluded,
        len({s.pseudonym for s in consenting}),
        list(manifest.input.modalities),
    )
    if not studies:
        raise JobFailure(
            JobState.FAILED, "empty_cohort", ["no study of the dataset matches the cohort query"]
        )
    _update(
        runtime,
        job.id,
        studies_total=len(studies),
        cohort_size=len({study.pseudonym for study in studies}),
        cohort_hash=job.cohort_hash,
    )
    decimals = _release_terms(runtime, job.dataset).get("per_study_decimals", DEFAULT_DECIMALS)
    done = 0
    dropped: set[str] = set()

    written = {"at": float("-inf")}

    def progress(count: int) -> None:
        # Written at most twice a second (and once at the end): a write per batch would cost a
        # small model a fifth of its speed.
        nonlocal done
        done += count
        if time.monotonic() - written["at"] >= 0.5:
            _update(runtime, job.id, studies_done=done, lease_until=time.time() + LEASE_SECONDS)
            written["at"] = time.monotonic()

    checked = {"at": 0.0, "cancel": False}

    def cancelled() -> bool:
        # Asked before each study: the database is read at most once a second, not per study.
        if time.monotonic() - checked["at"] >= 1.0:
            with runtime.sessions() as session:
                query = select(Job.cancel_requested).where(Job.id == job.id)
                checked["cancel"] = bool(session.execute(query).scalar_one())
            checked["at"] = time.monotonic()
        return bool(checked["cancel"])

    sandbox = SandboxedModel(package_bytes, limits)
    try:
        with sandbox as model:
            outputs, stats = run_model(
                model,
                manifest,
                _inputs(runtime, job, studies, consent, manifest.input, dropped),
                batch_size=job.batch_size,
                on_batch=progress,
                should_stop=cancelled,
                decimals=decimals,
            )
    finally:
        # Which isolation layers held around the model (namespaces, seccomp, ...), for the job's
        # audit entry, also when the model failed: a DPO sees what a run was contained by.
        isolation = getattr(sandbox, "isolation_layers", None)
        if isinstance(isolation, dict):
            notes.isolation = {str(name): bool(on) for name, on in isolation.items()}
    _update(runtime, job.id, studies_done=done)
    # The last word on consent: anyone who opted out during the run leaves the result too.
    included = consent.refresh(force=True)
    patient_of = {study.study_uid: study.pseudonym for study in studies}
    kept = [output for output in outputs if patient_of[output.study_uid] in included]
    patients = len({patient_of[output.study_uid] for output in kept})
    _update(runtime, job.id, studies_skipped=len(stats.skipped) + len(dropped) + len(outputs) - len(kept))
    if not kept:
        raise JobFailure(JobState.FAILED, "no_output", ["no study of the cohort could be given to the model"])
    _release(runtime, job, manifest, kept, patients, decimals, notes)


def _release_terms(runtime: Runtime, dataset: str) -> dict[str, int]:
    """The dataset's release-channel caps from the active policy (egress.release_terms); {} when
    the policy gives none, and the release decision then denies with the reason."""
    try:
        runtime.policy.refresh()
        terms = runtime.policy.backend.evaluate(
            "connector.egress.release_terms", {"action": "release", "dataset": dataset}
        )
    except Exception:  # an engine error here only loses the caps; the release decision fails closed
        log.error("the release terms could not be evaluated", extra={"dataset": dataset})
        return {}
    if not isinstance(terms, dict):
        return {}
    return {
        name: value
        for name, value in terms.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }


def _release(
    runtime: Runtime,
    job: Job,
    manifest: Any,
    kept: list[Any],
    patients: int,
    decimals: int,
    notes: _RunNotes,
) -> None:
    def suppress(counts: dict[str, int]) -> dict[str, Any]:
        record = runtime.policy.catalog_record(job.dataset, counts)
        if record is None:
            raise JobFailure(
                JobState.FAILED, "no_terms", [f"the policy gives dataset {job.dataset} no valid terms"]
            )
        return dict(record["counts"])

    provenance = {
        "job": job.id,
        "dataset": job.dataset,
        "purpose": job.purpose,
        "model": job.model,
        "model_digest": job.package_digest,
        "team": job.team,
        "cohort_hash": job.cohort_hash,
        "policy_version": job.policy_version,
        "created_at": utc_now_text(),
    }
    document = build_result(kept, manifest, provenance, patients, suppress, decimals)
    numbers = int(document.release["numbers"])
    for _ in range(BUDGET_RETRIES):
        used = budget_used(runtime, job.team, job.dataset)
        notes.budget = {"team": job.team, "used_before": used, "numbers": numbers}
        release = {
            "action": "release",
            "dataset": job.dataset,
            "result": document.release,
            "budget": {"used": used},
        }
        decision = runtime.policy.decide_release(release, f"worker:{job.worker}", ["worker"])
        _audit_decision(runtime, job, "release", decision)
        if not decision.allow:
            raise JobFailure(
                JobState.FAILED, "egress_denied", [f"egress: {reason}" for reason in decision.reasons]
            )
        body = {**document.body, "policy_version_at_release": decision.policy_version}
        try:
            finish_job(
                runtime,
                job.id,
                JobState.SUCCEEDED,
                "",
                list(decision.reasons),
                sign_result(body, runtime.signing_key),
                details=notes.details(),
                charge=(job.team, job.dataset, used, numbers),
            )
            return
        except _BudgetMoved:
            continue  # another release of this team charged the budget first: decide on the new total
    raise JobFailure(
        JobState.FAILED,
        "budget_contended",
        ["the release budget kept changing under this job; nothing was released"],
    )


def sandbox_limits(settings: Any) -> SandboxLimits:
    """The model process's limits and device from the settings."""
    from connector.compute.inference import choose_device

    return SandboxLimits(
        memory_bytes=settings.job_memory_bytes,
        seconds=settings.job_seconds,
        device=choose_device(settings.compute_device).type,
        bwrap=settings.sandbox_bwrap,
        accept_weaker_isolation=tuple(settings.sandbox_accept_weaker_isolation),
    )


class Worker:
    """Takes jobs from the queue until stopped: `connector worker`, or a thread of `connector serve`.
    Each claimed job goes to the executor (default: run here; see connector.jobs.executors)."""

    def __init__(
        self, runtime: Runtime, limits: SandboxLimits, poll_seconds: float = 1.0, executor: Any = None
    ) -> None:
        self.runtime, self.limits, self.poll_seconds = runtime, limits, poll_seconds
        self.name = worker_name()
        # A worker only prepares tensors and reads outputs; the model computes in its own process.
        # Left at every core, torch's idle OpenMP threads here would busy-wait on the cores the
        # model process needs (measured: 0.29 of the bare loop's speed for a small model).
        torch.set_num_threads(1)
        if executor is None:
            from connector.jobs.executors import LocalExecutor

            executor = LocalExecutor(runtime, limits)
        self.executor = executor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> str | None:
        """Run the next queued job, if any; its final state."""
        fail_abandoned(self.runtime)
        job_id = claim_next(self.runtime, self.name)
        return self.executor.run(job_id) if job_id else None

    def serve(self, on_job: Callable[[str, str], None] | None = None) -> None:
        while not self._stop.is_set():
            try:
                job_id = claim_next(self.runtime, self.name)
                if job_id is None:
                    fail_abandoned(self.runtime)
                    self._stop.wait(self.poll_seconds)
                    continue
                state = self.executor.run(job_id)
                if on_job:
                    on_job(job_id, state)
            except Exception:  # the database went away for a moment: keep serving
                log.exception("worker loop error")
                self._stop.wait(self.poll_seconds)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve, name="job-worker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
