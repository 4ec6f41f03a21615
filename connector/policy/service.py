"""The policy service: the one place where the connector asks for a decision, and the DPO's tools.

`decide(policy, input)` evaluates `data.connector.decision.<policy>` of the active bundle and
always returns a Decision: the engine failing, no active policy or a malformed answer are denies
with a reason (fail closed), logged. Access and release decisions are written to the audit trail
with their input (the raw permit never: only what its verification found), the policy version and
digest, so `diff` can replay them under a draft. Activation refuses a bundle that does not compile,
lacks a decision, or whose Rego tests fail; the active one then stays in force.

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

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import AuditLog, utc_now_text
from connector.audit.models import AuditEntry
from connector.datasets.models import DatasetRecord
from connector.db.engine import transaction
from connector.policy import versions
from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.checker import Finding, check_bundle, has_errors
from connector.policy.consent import CohortSplit, split_cohort
from connector.policy.decision import POLICIES, Decision, decision_from_document
from connector.policy.engine import EmbeddedOpaBackend, PolicyBackend, PolicyEngineError, SqlDialect
from connector.policy.models import RevokedPermit
from connector.policy.permits import PermitCheck, PermitVerifier
from connector.policy.requests import parse_access, parse_release
from connector.policy.testing import RegoTestReport, run_tests
from connector.policy.versions import VersionInfo

log = logging.getLogger("connector.policy")

NO_POLICY = "no policy is active: a DPO must run `connector policy activate`"
AUDITED = ("access", "release")


@dataclass(frozen=True)
class Activation:
    activated: bool
    version: VersionInfo | None
    findings: tuple[Finding, ...] = ()
    tests: RegoTestReport | None = None
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "activated": self.activated,
            "version": self.version.to_json() if self.version else None,
            "reasons": list(self.reasons),
            "findings": [finding.to_json() for finding in self.findings],
            "tests": self.tests.to_json() if self.tests else None,
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


@functools.lru_cache(maxsize=32)
def _verified(bundle: PolicyBundle) -> tuple[tuple[Finding, ...], RegoTestReport | None]:
    findings = tuple(check_bundle(bundle))
    return findings, None if has_errors(list(findings)) else run_tests(bundle)


def verify_bundle(bundle: PolicyBundle) -> tuple[tuple[Finding, ...], RegoTestReport | None]:
    """The check findings and, when it has no errors, the test report of a bundle.

    Cached by content: the same files on the same engine give the same answers, and every process
    start (each test, each CLI call) would otherwise re-run the whole Rego suite.
    """
    return _verified(bundle)


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
    ) -> None:
        self._sessions = sessions
        self._engine = engine
        self._audit = audit
        self._backend = backend
        self._permits = permits
        self._initial_bundle_dir = initial_bundle_dir
        self._refresh_seconds = refresh_seconds
        self._lock = threading.RLock()
        self._loaded: VersionInfo | None = None
        self._state_json: str | None = None
        self._checked_at = float("-inf")
        self._filters: dict[tuple[str, str | None, str], str | None] = {}

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
            datasets = {name: {} for name in session.execute(select(DatasetRecord.name)).scalars()}
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

    def activate(
        self, bundle: PolicyBundle, actor: str, note: str = "", *, _refresh: bool = True
    ) -> Activation:
        """Check, test, load and record `bundle`; a refused bundle leaves the active one in force."""
        with self._lock:
            current = self.refresh(force=True) if _refresh else None
            findings, report = verify_bundle(bundle)
            reasons: list[str] = []
            if report is None:
                reasons.append("the bundle has errors (see findings)")
            else:
                if not report.results:
                    reasons.append("the bundle has no Rego tests (*_test.rego with test_* rules)")
                elif report.failed:
                    reasons.append(f"{len(report.failed)} of {len(report.results)} Rego tests fail")
            if not reasons and current is not None and current.digest == bundle.digest:
                return Activation(True, current, findings, report, ("this bundle is already active",))
            if not reasons:
                try:
                    self._backend.load(bundle, self.state())
                except PolicyEngineError as exc:
                    reasons.append(f"the policy engine refused the bundle: {exc}")
            if reasons:
                self._audit_activation(actor, bundle, "refused", reasons, current)
                if current is not None and self._loaded is not None:
                    self._loaded = None  # reload the active version on next use, whatever the backend holds
                    self.refresh(force=True)
                return Activation(False, current, findings, report, tuple(reasons))
            version = versions.record_activation(self._sessions, bundle, actor, note)
            self._loaded, self._state_json = version, json.dumps(self.state(), sort_keys=True)
            self._checked_at = time.monotonic()
            self._audit_activation(actor, bundle, "success", [f"activated as {version.label}"], current)
            return Activation(True, version, findings, report, (f"activated as {version.label}",))

    def _audit_activation(
        self, actor: str, bundle: PolicyBundle, outcome: str, reasons: list[str], previous: VersionInfo | None
    ) -> None:
        self._audit.record(
            actor=actor,
            action="policy.activate",
            object=bundle.digest,
            outcome=outcome,
            reasons=reasons,
            details={"previous": previous.label if previous else None, "files": sorted(bundle.files)},
        )

    def rollback(self, version: int, actor: str) -> Activation:
        info, bundle = versions.load_version(self._sessions, version)
        return self.activate(bundle, actor, f"rollback to {info.label}")

    def history(self, limit: int = 50) -> list[VersionInfo]:
        return versions.history(self._sessions, limit)

    def active(self) -> VersionInfo | None:
        return self.refresh(force=True)

    def diff(self, draft: PolicyBundle, limit: int = 200) -> DiffReport:
        """Replay the last `limit` recorded access and release decisions under `draft`."""
        with self._sessions() as session:
            rows = list(
                session.execute(
                    select(AuditEntry)
                    .where(AuditEntry.action.in_([f"policy.{name}" for name in AUDITED]))
                    .order_by(AuditEntry.seq.desc())
                    .limit(limit)
                ).scalars()
            )
        backend = EmbeddedOpaBackend()
        try:
            backend.load(draft, self.state())
        except PolicyEngineError as exc:
            backend.close()
            return DiffReport(0, (), draft.digest, (f"the draft does not compile: {exc}",))
        changed, replayed = [], 0
        try:
            for row in reversed(rows):
                details = json.loads(row.details)
                recorded_input = details.get("input")
                if not isinstance(recorded_input, dict) or "invalid_request" in recorded_input:
                    continue
                policy = row.action.removeprefix("policy.")
                replayed += 1
                before = {
                    "allow": row.outcome == "allow",
                    "reasons": json.loads(row.reasons),
                    "obligations": details.get("obligations", []),
                }
                try:
                    document = backend.evaluate(f"connector.decision.{policy}", recorded_input)
                    after_decision = decision_from_document(document, "draft")
                except PolicyEngineError as exc:
                    after_decision = Decision.deny([f"the policy engine failed: {exc}"], "draft")
                after = {
                    "allow": after_decision.allow,
                    "reasons": list(after_decision.reasons),
                    "obligations": list(after_decision.obligations),
                }
                if before != after:
                    changed.append(DiffEntry(row.seq, row.ts, policy, row.object, before, after))
        finally:
            backend.close()
        return DiffReport(replayed, tuple(changed), draft.digest)

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
