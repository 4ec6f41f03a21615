"""The policy service: the one place where the connector asks for a decision, and the DPO's tools.

`decide(policy, input)` evaluates `data.connector.decision.<policy>` of the active bundle and
always returns a Decision: the engine failing, no active policy or a malformed answer are denies
with a reason (fail closed), logged. Access and release decisions are written to the audit trail
with their input (the raw permit never: only what its verification found), the policy version and
digest, so `diff` can replay them under a draft. Activation refuses a bundle that does not compile,
lacks a decision, whose Rego tests fail or cover less than `policy_min_coverage` of its lines, or
that breaks one of the connector's own invariants (connector.policy.invariants, out of the DPO's
reach); the active one then stays in force. Every activation replays recent recorded decisions
under the candidate and shows and audits how many would change (allow <-> deny flips named). In
production mode (four eyes) an activation or rollback only creates a pending activation that a
second, different DPO approves (every check re-run on the same digest) or rejects. A draft's Rego
is only ever evaluated in a child process under `policy_eval_timeout_seconds`
(connector.policy.sandbox); decisions on the active policy stay in-process.

Several processes (the API, the CLI, workers) share one database: each re-reads the active version
and the revoked permits at most every `policy_refresh_seconds`, and at once after its own changes.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import AuditLog, utc_now_text
from connector.audit.models import AuditEntry
from connector.datasets.models import DatasetRecord
from connector.db.engine import rows_matched, transaction
from connector.policy import sandbox, versions
from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.checker import Finding, has_errors
from connector.policy.consent import CohortSplit, split_cohort
from connector.policy.decision import POLICIES, Decision, decision_from_document
from connector.policy.engine import PolicyBackend, PolicyEngineError, SqlDialect
from connector.policy.invariants import InvariantReport
from connector.policy.models import PolicyApproval, RevokedPermit
from connector.policy.permits import PermitCheck, PermitVerifier
from connector.policy.requests import parse_access, parse_release
from connector.policy.testing import RegoTestReport
from connector.policy.versions import VersionInfo

log = logging.getLogger("connector.policy")

NO_POLICY = "no policy is active: a DPO must run `connector policy activate`"
AUDITED = ("access", "release")


@dataclass(frozen=True)
class ActivationGuard:
    """What an activation must pass beyond compiling (from the settings).

    `four_eyes` (production: `dev_issuer_enabled` false) turns an activation into a pending one that
    a second DPO approves; `min_coverage` is the share of Rego policy lines the bundle's tests must
    cover; `eval_timeout` bounds every evaluation of a draft, in seconds.
    """

    four_eyes: bool = False
    min_coverage: float = 0.8
    eval_timeout: float = sandbox.DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class PendingActivation:
    id: int
    digest: str
    requested_at: str
    requested_by: str
    note: str
    replay: dict[str, Any]
    status: str
    decided_at: str | None
    decided_by: str | None
    decision_note: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ApprovalError(Exception):
    """An approval or rejection that may not happen; `code` is the machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Activation:
    activated: bool
    version: VersionInfo | None
    findings: tuple[Finding, ...] = ()
    tests: RegoTestReport | None = None
    reasons: tuple[str, ...] = ()
    invariants: InvariantReport | None = None
    replay: dict[str, Any] | None = None
    pending: PendingActivation | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "activated": self.activated,
            "version": self.version.to_json() if self.version else None,
            "reasons": list(self.reasons),
            "findings": [finding.to_json() for finding in self.findings],
            "tests": self.tests.to_json() if self.tests else None,
            "invariants": self.invariants.to_json() if self.invariants else None,
            "replay": self.replay,
            "pending": self.pending.to_json() if self.pending else None,
        }


@dataclass(frozen=True)
class DiffEntry:
    seq: int
    ts: str
    policy: str
    object: str
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True)
class DiffReport:
    replayed: int
    changed: tuple[DiffEntry, ...]
    draft_digest: str
    errors: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "replayed": self.replayed,
            "changed": [entry.__dict__ for entry in self.changed],
            "draft_digest": self.draft_digest,
            "errors": list(self.errors),
        }


@dataclass(frozen=True)
class Verification:
    """What a candidate bundle showed: check findings, its own tests, the connector's invariants."""

    findings: tuple[Finding, ...]
    tests: RegoTestReport | None  # None when the bundle has errors
    invariants: InvariantReport | None  # None when the bundle has errors

    def refusals(self, min_coverage: float) -> list[str]:
        """Why the bundle may not be activated; empty when it may."""
        if self.tests is None or self.invariants is None:
            return ["the bundle has errors (see findings)"]
        reasons = []
        if not self.tests.results:
            reasons.append("the bundle has no Rego tests (*_test.rego with test_* rules)")
        elif self.tests.failed:
            reasons.append(f"{len(self.tests.failed)} of {len(self.tests.results)} Rego tests fail")
        if self.tests.coverage < 100.0 * min_coverage:
            reasons.append(
                f"the Rego tests cover {self.tests.coverage:.1f}% of the policy lines, below the floor "
                f"of {100.0 * min_coverage:.0f}% (policy_min_coverage)"
            )
        failed = self.invariants.failed
        if failed:
            names = "; ".join(f"{r.name}{f' ({r.detail})' if r.detail else ''}" for r in failed[:8])
            more = f"; and {len(failed) - 8} more" if len(failed) > 8 else ""
            reasons.append(
                f"{len(failed)} of {len(self.invariants.results)} connector invariants fail: {names}{more}"
            )
        return reasons


@functools.lru_cache(maxsize=32)
def _verified(bundle: PolicyBundle, timeout: float) -> Verification:
    answer = sandbox.run("verify", bundle, timeout)
    findings = sandbox.findings_from_list(answer["findings"])
    if answer.get("report") is None or answer.get("invariants") is None:
        return Verification(findings, None, None)
    return Verification(
        findings,
        sandbox.report_from_dict(answer["report"]),
        sandbox.invariants_from_list(answer["invariants"]),
    )


def verify_bundle(bundle: PolicyBundle, timeout: float = sandbox.DEFAULT_TIMEOUT_SECONDS) -> Verification:
    """The check findings, test report and invariants of a bundle, evaluated under `timeout`.

    Cached by content: the same files on the same engine give the same answers, and every process
    start (each test, each CLI call) would otherwise re-run the whole Rego suite. A timeout raises
    EvaluationTimeout and is not cached.
    """
    if has_errors(list(_cheap_findings(bundle))):
        return Verification(_cheap_findings(bundle), None, None)
    return _verified(bundle, timeout)


def _cheap_findings(bundle: PolicyBundle) -> tuple[Finding, ...]:
    """Data-file errors found without evaluating anything (no child process needed)."""
    try:
        bundle.data  # noqa: B018 - parsing the data files is the check
    except BundleError as exc:
        return (Finding("error", None, None, str(exc)),)
    return ()


class PolicyService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        engine: Engine,
        audit: AuditLog,
        backend: PolicyBackend,
        permits: PermitVerifier,
        initial_bundle_dir: Path,
        refresh_seconds: float = 2.0,
        guard: ActivationGuard | None = None,
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._audit = audit
        self._backend = backend
        self._permits = permits
        self._initial_bundle_dir = initial_bundle_dir
        self._refresh_seconds = refresh_seconds
        self._guard = guard or ActivationGuard()
        self._lock = threading.RLock()
        self._loaded: VersionInfo | None = None
        self._state_json: str | None = None
        self._checked_at = float("-inf")
        self._filters: dict[tuple[str, str | None, str], str | None] = {}

    @property
    def guard(self) -> ActivationGuard:
        return self._guard

    @property
    def backend(self) -> PolicyBackend:
        return self._backend

    @property
    def permits(self) -> PermitVerifier:
        return self._permits

    @property
    def dialect(self) -> SqlDialect:
        return "postgresql" if self._engine.dialect.name == "postgresql" else "sqlite"

    # -- keeping the engine current -------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """`data.connector.state`: the datasets held here and the revoked permits."""
        with self._sessions() as session:
            datasets: dict[str, dict[str, Any]] = {
                name: {} for name in session.execute(select(DatasetRecord.name)).scalars()
            }
            revoked = {
                row.permit_id: {"reason": row.reason, "revoked_at": row.revoked_at}
                for row in session.execute(select(RevokedPermit)).scalars()
            }
        return {"datasets": datasets, "revoked_permits": revoked}

    def refresh(self, force: bool = False) -> VersionInfo | None:
        """Bring the engine to the active version and current state; the active version or None."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._checked_at < self._refresh_seconds:
                return self._loaded
            active = versions.active_version(self._sessions)
            if active is None:
                active = self._first_start()
            state = self.state()
            state_json = json.dumps(state, sort_keys=True)
            if active is not None and (self._loaded is None or self._loaded.version != active.version):
                _, bundle = versions.load_version(self._sessions, active.version)
                self._backend.load(bundle, state)
                self._loaded, self._state_json = active, state_json
            elif active is not None and state_json != self._state_json:
                self._backend.set_state(state)
                self._state_json = state_json
            self._checked_at = now
            return self._loaded

    def _first_start(self) -> VersionInfo | None:
        """Activate the shipped bundle when no policy was ever activated (audited as such)."""
        try:
            bundle = PolicyBundle.from_dir(self._initial_bundle_dir)
        except BundleError as exc:
            log.error("no policy is active and the initial bundle cannot be read: %s", exc)
            return None
        outcome = self.activate(bundle, "connector (first start)", "initial policies", _refresh=False)
        if not outcome.activated:
            log.error("the initial policy bundle was refused: %s", "; ".join(outcome.reasons))
        return outcome.version if outcome.activated else None

    # -- decisions ------------------------------------------------------------------------------

    def decide(
        self, policy: str, input: Any, actor: str = "connector", roles: Iterable[str] = ()
    ) -> Decision:
        """The active policy's decision on `input`; a reasoned deny on any failure (fail closed)."""
        decision = self._evaluate(policy, input)
        if policy in AUDITED or (policy == "api" and not decision.allow):
            self._record(policy, input, decision, actor, roles)
        return decision

    def _evaluate(self, policy: str, input: Any) -> Decision:
        if policy not in POLICIES:
            return Decision.deny([f"there is no policy {policy!r}; choose from {', '.join(POLICIES)}"])
        try:
            active = self.refresh()
            if active is None:
                return Decision.deny([NO_POLICY])
            document = self._backend.evaluate(f"connector.decision.{policy}", input)
        except Exception as exc:  # any failure, of any kind, must deny
            log.error("policy evaluation failed, denying", extra={"policy": policy, "error": str(exc)})
            return Decision.deny([f"the policy engine failed, so the request is denied: {exc}"])
        return decision_from_document(document, active.label)

    def _record(self, policy: str, input: Any, decision: Decision, actor: str, roles: Iterable[str]) -> None:
        obj = input.get("dataset") or input.get("route") if isinstance(input, dict) else None
        self._audit.record(
            actor=actor,
            action=f"policy.{policy}",
            object=str(obj or "(none)")[:200],
            outcome="allow" if decision.allow else "deny",
            reasons=decision.reasons,
            details={
                "input": input,
                "obligations": list(decision.obligations),
                "policy_version": decision.policy_version,
                "policy_digest": self._loaded.digest if self._loaded else None,
            },
            roles=roles,
        )

    def access_input(self, request: dict[str, Any]) -> dict[str, Any] | list[str]:
        """The evaluation input for an access request, or the reasons it does not fit the format."""
        parsed = parse_access(request)
        if isinstance(parsed, list):
            return parsed
        document = parsed.model_dump()
        permit = document.pop("permit")
        document["permit_check"] = self._permits.check(permit).to_input()
        excluded = 0
        if self._dataset_exists(parsed.dataset):
            split = self.cohort(parsed.dataset, count_only=True)
            excluded = split.excluded
            document["cohort"]["size"] = min(parsed.cohort.size, split.included_count)
        document["cohort"]["excluded"] = excluded
        return document

    def decide_access(self, request: Any, actor: str = "connector", roles: Iterable[str] = ()) -> Decision:
        """A decision on a request in the stable access format (the permit verified first)."""
        try:
            prepared = (
                self.access_input(request)
                if isinstance(request, dict)
                else ["the request must be a JSON object"]
            )
        except Exception as exc:
            log.error("preparing an access decision failed, denying", extra={"error": str(exc)})
            prepared = [f"the request could not be prepared, so it is denied: {exc}"]
        if isinstance(prepared, list):
            decision = Decision.deny(
                [f"the request does not match the access-request format: {problem}" for problem in prepared],
                self._loaded.label if self._loaded else None,
            )
            self._record("access", {"invalid_request": prepared}, decision, actor, roles)
            return decision
        return self.decide("access", prepared, actor, roles)

    def decide_release(self, request: Any, actor: str = "connector", roles: Iterable[str] = ()) -> Decision:
        parsed = parse_release(request)
        if isinstance(parsed, list):
            decision = Decision.deny(
                [f"the release does not match the release format: {problem}" for problem in parsed],
                self._loaded.label if self._loaded else None,
            )
            self._record("release", {"invalid_request": parsed}, decision, actor, roles)
            return decision
        return self.decide("release", parsed.model_dump(), actor, roles)

    def authorize(self, method: str, route: str, roles: Iterable[str], actor: str) -> Decision:
        """The API role policy's decision for one call (denials are audited)."""
        roles = sorted(str(role) for role in roles)
        return self.decide(
            "api", {"action": "api", "method": method, "route": route, "roles": roles}, actor, roles
        )

    def decide_any(self, document: Any, actor: str = "connector", roles: Iterable[str] = ()) -> Decision:
        """Dispatch on `action`, for `policy decide --input FILE` and the API."""
        action = document.get("action") if isinstance(document, dict) else None
        if action == "access":
            return self.decide_access(document, actor, roles)
        if action == "release":
            return self.decide_release(document, actor, roles)
        if action == "api":
            return self.decide("api", document, actor, roles)
        return Decision.deny([f"input.action must be one of access, release, api (got {action!r:.40})"])

    def catalog_record(self, dataset: str, counts: dict[str, int]) -> dict[str, Any] | None:
        """`data.connector.catalog.record`: the dataset's offer and its counts as the catalog may show
        them; None when the active policy gives the dataset no valid terms. Raises PolicyEngineError."""
        active = self.refresh()
        if active is None:
            raise PolicyEngineError(NO_POLICY)
        document = self._backend.evaluate("connector.catalog.record", {"dataset": dataset, "counts": counts})
        return document if isinstance(document, dict) else None

    def check_permit(self, permit: Any) -> PermitCheck:
        """The signature and claims check of one data permit (no decision: the policy decides)."""
        return self._permits.check(permit)

    def copies_allowed(self, dataset: str) -> bool:
        """Whether the dataset's terms allow encrypted copies to peers (never on an engine error)."""
        try:
            record = self.catalog_record(dataset, {})
        except PolicyEngineError:
            log.error("the copy terms could not be evaluated, treating copies as not allowed")
            return False
        offer = record.get("offer") if record else None
        return isinstance(offer, dict) and offer.get("copies") is True

    # -- cohorts --------------------------------------------------------------------------------

    def _dataset_exists(self, dataset: str) -> bool:
        with self._sessions() as session:
            return session.get(DatasetRecord, dataset) is not None

    def cohort(self, dataset: str, count_only: bool = False) -> CohortSplit:
        """The dataset's patients split by the consent policy: one compiled filter, one query."""
        active = self.refresh()
        if active is None:
            raise PolicyEngineError(NO_POLICY)
        key = (active.digest, self._state_json, dataset)
        if key not in self._filters:
            # The condition depends only on the policy, its data and the dataset: compiled once per
            # version and state, not per decision.
            if len(self._filters) > 1000:
                self._filters.clear()
            self._filters[key] = self._backend.compile_filter(
                "connector.consent.include", {"dataset": dataset}, ["input.patients"], self.dialect
            )
        return split_cohort(self._engine, dataset, self._filters[key], count_only)

    # -- the DPO's tools ------------------------------------------------------------------------

    def _verify(self, bundle: PolicyBundle) -> tuple[Verification | None, list[str]]:
        """The candidate's verification and why it is refused (a timeout or engine failure refuses)."""
        try:
            verification = verify_bundle(bundle, self._guard.eval_timeout)
        except PolicyEngineError as exc:
            return None, [f"the bundle could not be verified: {exc}"]
        return verification, verification.refusals(self._guard.min_coverage)

    def _replay_summary(self, bundle: PolicyBundle) -> tuple[dict[str, Any], list[str]]:
        """How many recent recorded decisions the candidate would change, flips named (shown and audited)."""
        try:
            report = self.diff(bundle, compile_check=False)
        except PolicyEngineError as exc:
            return {"replayed": 0, "changed": 0, "flips": [], "errors": [str(exc)]}, [
                f"recent decisions could not be replayed under the bundle: {exc}"
            ]
        flips = [
            {
                "seq": entry.seq,
                "policy": entry.policy,
                "object": entry.object,
                "before": "allow" if entry.before["allow"] else "deny",
                "after": "allow" if entry.after["allow"] else "deny",
            }
            for entry in report.changed
            if entry.before["allow"] != entry.after["allow"]
        ]
        summary = {
            "replayed": report.replayed,
            "changed": len(report.changed),
            "flip_count": len(flips),
            "flips": flips[:50],
            "errors": list(report.errors),
        }
        return summary, [f"the bundle could not be replayed: {error}" for error in report.errors]

    def _check(self, bundle: PolicyBundle) -> tuple[Verification | None, dict[str, Any] | None, list[str]]:
        verification, reasons = self._verify(bundle)
        if reasons:
            return verification, None, reasons
        replay, reasons = self._replay_summary(bundle)
        return verification, replay, reasons

    def activate(
        self, bundle: PolicyBundle, actor: str, note: str = "", *, _refresh: bool = True
    ) -> Activation:
        """Check, test and probe `bundle`, then activate it (dev mode) or ask a second DPO (four eyes).

        A refused bundle leaves the active one in force. The checks run in a child process, outside
        the service lock, so decisions on the active policy are not held up meanwhile.
        """
        current = self.refresh(force=True) if _refresh else None
        verification, replay, reasons = self._check(bundle)
        if reasons:
            return self._refused(bundle, actor, "policy.activate", reasons, current, verification, replay)
        assert verification is not None
        if current is not None and current.digest == bundle.digest:
            return self._outcome(True, current, verification, replay, ("this bundle is already active",))
        if self._guard.four_eyes and _refresh:
            pending = self._request_approval(bundle, actor, note, replay or {})
            reason = f"awaiting approval by a second DPO: pending activation #{pending.id}"
            self._audit_activation(
                actor, bundle, "pending", [reason], current, "policy.activate", replay, pending.id
            )
            return self._outcome(False, current, verification, replay, (reason,), pending)
        return self._install(bundle, actor, note, current, verification, replay, "policy.activate")

    def _outcome(
        self,
        activated: bool,
        version: VersionInfo | None,
        verification: Verification | None,
        replay: dict[str, Any] | None,
        reasons: Iterable[str],
        pending: PendingActivation | None = None,
    ) -> Activation:
        return Activation(
            activated,
            version,
            verification.findings if verification else (),
            verification.tests if verification else None,
            tuple(reasons),
            verification.invariants if verification else None,
            replay,
            pending,
        )

    def _refused(
        self,
        bundle: PolicyBundle,
        actor: str,
        action: str,
        reasons: list[str],
        current: VersionInfo | None,
        verification: Verification | None,
        replay: dict[str, Any] | None,
        pending_id: int | None = None,
    ) -> Activation:
        self._audit_activation(actor, bundle, "refused", reasons, current, action, replay, pending_id)
        return self._outcome(False, current, verification, replay, reasons)

    def _install(
        self,
        bundle: PolicyBundle,
        actor: str,
        note: str,
        current: VersionInfo | None,
        verification: Verification,
        replay: dict[str, Any] | None,
        action: str,
        pending_id: int | None = None,
    ) -> Activation:
        with self._lock:
            try:
                self._backend.load(bundle, self.state())
            except PolicyEngineError as exc:
                if current is not None and self._loaded is not None:
                    self._loaded = None  # reload the active version on next use, whatever the backend holds
                    self.refresh(force=True)
                return self._refused(
                    bundle,
                    actor,
                    action,
                    [f"the policy engine refused the bundle: {exc}"],
                    current,
                    verification,
                    replay,
                    pending_id,
                )
            version = versions.record_activation(self._sessions, bundle, actor, note)
            self._loaded, self._state_json = version, json.dumps(self.state(), sort_keys=True)
            self._checked_at = time.monotonic()
        self._audit_activation(
            actor, bundle, "success", [f"activated as {version.label}"], current, action, replay, pending_id
        )
        return self._outcome(True, version, verification, replay, (f"activated as {version.label}",))

    def _audit_activation(
        self,
        actor: str,
        bundle: PolicyBundle,
        outcome: str,
        reasons: list[str],
        previous: VersionInfo | None,
        action: str = "policy.activate",
        replay: dict[str, Any] | None = None,
        pending_id: int | None = None,
    ) -> None:
        self._audit.record(
            actor=actor,
            action=action,
            object=bundle.digest,
            outcome=outcome,
            reasons=reasons,
            details={
                "previous": previous.label if previous else None,
                "files": sorted(bundle.files),
                "replay": replay,
                "pending_id": pending_id,
            },
        )

    def rollback(self, version: int, actor: str) -> Activation:
        """Bring an earlier version back: the same checks (and, in production, the same approval)."""
        info, bundle = versions.load_version(self._sessions, version)
        return self.activate(bundle, actor, f"rollback to {info.label}")

    # -- four eyes ------------------------------------------------------------------------------

    def _request_approval(
        self, bundle: PolicyBundle, actor: str, note: str, replay: dict[str, Any]
    ) -> PendingActivation:
        with transaction(self._sessions) as session:
            row = PolicyApproval(
                digest=bundle.digest,
                bundle=bundle.to_json(),
                requested_at=utc_now_text(),
                requested_by=actor[:200],
                note=note,
                replay=json.dumps(replay),
                status="pending",
                decision_note="",
            )
            session.add(row)
            session.flush()
            return _pending(row)

    def pending(self, status: str | None = "pending", limit: int = 100) -> list[PendingActivation]:
        """Pending activations (or those with `status`; None: all), newest first."""
        query = select(PolicyApproval).order_by(PolicyApproval.id.desc()).limit(limit)
        if status is not None:
            query = query.where(PolicyApproval.status == status)
        with self._sessions() as session:
            return [_pending(row) for row in session.execute(query).scalars()]

    def _claim(self, approval_id: int, actor: str, status: str, note: str) -> PendingActivation:
        """Move a pending activation to `status`; ApprovalError when it is no longer pending."""
        with transaction(self._sessions) as session:
            # Conditional on still being pending, so two DPOs (or processes) cannot both decide it.
            claimed = rows_matched(session.execute(
                update(PolicyApproval)
                .where(PolicyApproval.id == approval_id, PolicyApproval.status == "pending")
                .values(status=status, decided_at=utc_now_text(), decided_by=actor[:200], decision_note=note)
            ))
            row = session.get(PolicyApproval, approval_id)
            if row is None:
                raise LookupError(f"there is no pending activation #{approval_id}")
            if not claimed:
                raise ApprovalError("not_pending", f"activation #{approval_id} is already {row.status}")
            return _pending(row)

    def _load_pending(self, approval_id: int) -> tuple[PendingActivation, PolicyBundle]:
        with self._sessions() as session:
            row = session.get(PolicyApproval, approval_id)
            if row is None:
                raise LookupError(f"there is no pending activation #{approval_id}")
            info, bundle = _pending(row), PolicyBundle.from_json(row.bundle)
        if info.status != "pending":
            raise ApprovalError("not_pending", f"activation #{approval_id} is already {info.status}")
        if bundle.digest != info.digest:
            raise ApprovalError(
                "digest_mismatch", f"the stored bundle of #{approval_id} does not match its digest"
            )
        return info, bundle

    def approve(self, approval_id: int, actor: str, note: str = "") -> Activation:
        """A second DPO's approval: every check again on the same digest, then activation.

        The requester may not approve their own activation (ApprovalError "same_dpo", audited);
        LookupError for an unknown id; ApprovalError "not_pending" once it was decided.
        """
        info, bundle = self._load_pending(approval_id)
        if actor == info.requested_by:
            reason = "four eyes: the DPO who requested an activation cannot approve it; a second DPO must"
            self._audit_activation(actor, bundle, "refused", [reason], None, "policy.approve", None, info.id)
            raise ApprovalError("same_dpo", reason)
        current = self.refresh(force=True)
        verification, replay, reasons = self._check(bundle)
        if reasons:
            self._claim(approval_id, actor, "refused", "; ".join(reasons)[:2000])
            return self._refused(
                bundle, actor, "policy.approve", reasons, current, verification, replay, info.id
            )
        assert verification is not None
        self._claim(approval_id, actor, "approved", note)
        if current is not None and current.digest == bundle.digest:
            self._audit_activation(
                actor,
                bundle,
                "success",
                ["this bundle is already active"],
                current,
                "policy.approve",
                replay,
                info.id,
            )
            return self._outcome(True, current, verification, replay, ("this bundle is already active",))
        combined = (
            f"{info.note} (requested by {info.requested_by} as #{info.id}; approved by {actor}"
            + (f": {note})" if note else ")")
        ).strip()
        return self._install(
            bundle, actor, combined, current, verification, replay, "policy.approve", info.id
        )

    def reject(self, approval_id: int, actor: str, note: str = "") -> PendingActivation:
        """Reject (or, by its requester, withdraw) a pending activation; audited."""
        info, bundle = self._load_pending(approval_id)
        decided = self._claim(approval_id, actor, "rejected", note)
        self._audit_activation(
            actor,
            bundle,
            "success",
            [f"pending activation #{info.id} rejected: {note}".strip()],
            None,
            "policy.reject",
            None,
            info.id,
        )
        return decided

    def history(self, limit: int = 50) -> list[VersionInfo]:
        return versions.history(self._sessions, limit)

    def active(self) -> VersionInfo | None:
        return self.refresh(force=True)

    def diff(self, draft: PolicyBundle, limit: int = 200, *, compile_check: bool = True) -> DiffReport:
        """Replay the last `limit` recorded access and release decisions under `draft`.

        Raises EvaluationTimeout (a PolicyEngineError) when the draft's evaluation passes the deadline.
        """
        with self._sessions() as session:
            rows = list(
                session.execute(
                    select(AuditEntry)
                    .where(AuditEntry.action.in_([f"policy.{name}" for name in AUDITED]))
                    .order_by(AuditEntry.seq.desc())
                    .limit(limit)
                ).scalars()
            )
        items: list[list[Any]] = []  # [policy name, recorded input]: JSON for the sandbox
        recorded = []
        for row in reversed(rows):
            details = json.loads(row.details)
            recorded_input = details.get("input")
            if not isinstance(recorded_input, dict) or "invalid_request" in recorded_input:
                continue
            items.append([row.action.removeprefix("policy."), recorded_input])
            recorded.append((row, details))
        if not items and not compile_check:
            return DiffReport(0, (), draft.digest)  # nothing to replay (the draft was compiled already)
        # The draft is DPO-supplied code: evaluated in a child process under the deadline.
        answers = sandbox.run("replay", draft, self._guard.eval_timeout, state=self.state(), items=items)[
            "answers"
        ]
        if answers and "compile_error" in answers[0]:
            return DiffReport(
                0, (), draft.digest, (f"the draft does not compile: {answers[0]['compile_error']}",)
            )
        changed = []
        for (policy, _), (row, details), answer in zip(items, recorded, answers, strict=True):
            before = {
                "allow": row.outcome == "allow",
                "reasons": json.loads(row.reasons),
                "obligations": details.get("obligations", []),
            }
            if "error" in answer:
                after_decision = Decision.deny([f"the policy engine failed: {answer['error']}"], "draft")
            else:
                after_decision = decision_from_document(answer.get("document"), "draft")
            after = {
                "allow": after_decision.allow,
                "reasons": list(after_decision.reasons),
                "obligations": list(after_decision.obligations),
            }
            if before != after:
                changed.append(DiffEntry(row.seq, row.ts, policy, row.object, before, after))
        return DiffReport(len(items), tuple(changed), draft.digest)

    def revoke_permit(self, permit_id: str, reason: str, actor: str) -> None:
        if not permit_id.strip() or not reason.strip():
            raise ValueError("a revocation needs the permit id and a reason")
        with transaction(self._sessions) as session:
            row = session.get(RevokedPermit, permit_id)
            if row is None:
                session.add(
                    RevokedPermit(
                        permit_id=permit_id[:200],
                        reason=reason,
                        revoked_at=utc_now_text(),
                        revoked_by=actor[:200],
                    )
                )
        self._audit.record(actor, "permit.revoke", permit_id[:200], "success", [reason])
        self.refresh(force=True)

    def revoked_permits(self) -> list[dict[str, str]]:
        with self._sessions() as session:
            return [
                {
                    "permit_id": r.permit_id,
                    "reason": r.reason,
                    "revoked_at": r.revoked_at,
                    "revoked_by": r.revoked_by,
                }
                for r in session.execute(select(RevokedPermit).order_by(RevokedPermit.revoked_at)).scalars()
            ]

    def check(self) -> None:
        self._backend.check()


def _pending(row: PolicyApproval) -> PendingActivation:
    return PendingActivation(
        row.id,
        row.digest,
        row.requested_at,
        row.requested_by,
        row.note,
        json.loads(row.replay or "{}"),
        row.status,
        row.decided_at,
        row.decided_by,
        row.decision_note,
    )
