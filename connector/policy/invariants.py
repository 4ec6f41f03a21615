"""The connector's own invariants: decisions every bundle must make before it may be activated.

A bundle's Rego tests are written by the DPO who edits the bundle, so they can be emptied or
bent together with the policy (an always-allow `decision.rego` with `test_trivial if true`). These
checks live in the connector package instead, out of the bundle's reach: they evaluate the
CANDIDATE's decisions on fixed inputs built from the candidate's own data.json (its datasets, k,
purposes, countries, egress limits), so they follow the DPO's legitimate settings but not a
weakened decision. They cover EHDS art. 54 prohibited purposes, the data permit (missing, forged,
expired, revoked, for another dataset, requester or purpose), k-anonymity of cohorts and results,
egress (pixels, pseudonyms, size), consent (opted-out and withdrawn patients excluded), the API
role policy (unknown routes, callers without roles) and a backdoor probe (decisions must not
depend on the requester's identity except through the permit).

This module only evaluates a candidate on an engine of its own; it never activates anything, never
touches the database and never loosens a check from the bundle's data (a prohibited purpose stays
prohibited whatever data.json lists).
"""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.decision import Decision, decision_from_document
from connector.policy.engine import EmbeddedOpaBackend, PolicyEngineError

# EHDS art. 54: never a permitted purpose of secondary use, whatever the bundle says.
PROHIBITED_PURPOSES = (
    "detrimental-decision",
    "insurance-or-credit-decision",
    "advertising",
    "harmful-products",
    "weapons",
)
# Every status PermitVerifier gives a permit that is not valid (connector.policy.permits).
INVALID_PERMIT_STATUSES = (
    "missing",
    "expired",
    "not_yet_valid",
    "invalid_signature",
    "untrusted_issuer",
    "malformed",
)
ROLES = ("steward", "dpo", "researcher", "hdab", "peer")
EXAMPLE_REQUESTER = "researcher-ana"
NEVER_SEEN_REQUESTER = "invariant-probe-requester-7f3c"
PROBE_DATASET = "invariant-probe-dataset"  # in the state, not in the settings: the defaults apply
UNKNOWN_DATASET = "invariant-unknown-dataset"  # in neither
REVOKED_PERMIT = "INVARIANT-REVOKED-PERMIT"
UNKNOWN_ROUTE = "/v1/invariant-probe-unknown-route"
MAX_DATASETS = 20
MAX_LITERALS = 300
# Rego string literals ("..." with escapes, and `...` raw strings): candidates for a backdoor identity.
_STRING = re.compile(r'"((?:[^"\\\n]|\\.){1,100})"|`([^`]{1,100})`')


@dataclass(frozen=True)
class InvariantResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class InvariantReport:
    results: tuple[InvariantResult, ...]

    @property
    def failed(self) -> tuple[InvariantResult, ...]:
        return tuple(result for result in self.results if not result.passed)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": len(self.results),
            "failed": [{"invariant": r.name, "detail": r.detail} for r in self.failed],
        }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _terms(settings: dict[str, Any], dataset: str) -> dict[str, Any]:
    """A dataset's terms as decision.rego merges them (defaults, then its own; egress key by key)."""
    defaults = _object(settings.get("defaults"))
    own = _object(_object(settings.get("datasets")).get(dataset))
    terms = {**defaults, **own}
    terms["egress"] = {**_object(defaults.get("egress")), **_object(own.get("egress"))}
    return terms


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _literals(bundle: PolicyBundle) -> list[str]:
    """String literals of the policy modules and data: any identity a backdoor could compare with."""
    found: dict[str, None] = {}

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.setdefault(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                found.setdefault(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for name, source in sorted(bundle.modules.items()):
        if name.endswith("_test.rego"):
            continue
        for match in _STRING.finditer(source):
            found.setdefault(match.group(1) or match.group(2) or "")
    with contextlib.suppress(BundleError):  # the checker reports bad data files; probe with the rest
        walk(bundle.data)
    # Messages (with spaces or sprintf verbs) are not identities; the cap bounds the probe's cost.
    return [text for text in found if text and not re.search(r"\s|%", text)][:MAX_LITERALS]


class _Probe:
    """Evaluates decisions of the candidate and records each invariant's outcome."""

    def __init__(self, backend: EmbeddedOpaBackend) -> None:
        self._backend = backend
        self.results: list[InvariantResult] = []

    def decide(self, policy: str, input: dict[str, Any]) -> Decision:
        try:
            document = self._backend.evaluate(f"connector.decision.{policy}", input)
        except PolicyEngineError as exc:
            # The service denies on an engine error too, so this is the decision the connector makes.
            return Decision.deny([str(exc)], "candidate")
        return decision_from_document(document, "candidate")

    def expect_deny(self, name: str, policy: str, input: dict[str, Any]) -> None:
        decision = self.decide(policy, input)
        detail = "" if not decision.allow else f"allowed: {'; '.join(decision.reasons)[:200]}"
        self.results.append(InvariantResult(name, not decision.allow, detail))

    def expect(self, name: str, passed: bool, detail: str = "") -> None:
        self.results.append(InvariantResult(name, passed, "" if passed else detail))


def _claims(
    requester: str, dataset: str, purpose: str, permit_id: str = "INVARIANT-PERMIT-1"
) -> dict[str, Any]:
    return {
        "permit_id": permit_id,
        "issuer": "https://hdab.invariant.example",
        "requester": requester,
        "organisation": "Invariant Probe Lab",
        "purposes": [purpose],
        "datasets": [dataset],
        "countries": [],
        "not_before": 1767225600,
        "expires": 4102444799,
        "conditions": [],
    }


def _access(
    dataset: str, purpose: str, country: str, size: int, requester: str = EXAMPLE_REQUESTER, **claims: Any
) -> dict[str, Any]:
    permit_claims = {**_claims(requester, dataset, purpose), **claims}
    return {
        "action": "access",
        "dataset": dataset,
        "purpose": purpose,
        "requester": {"id": requester, "organisation": "Invariant Probe Lab", "country": country},
        "permit_check": {"status": "valid", "detail": "signature verified", "claims": permit_claims},
        "cohort": {"size": size, "excluded": 0},
    }


def _release(dataset: str, size: int, min_cell: int | None, **result: Any) -> dict[str, Any]:
    return {
        "action": "release",
        "dataset": dataset,
        "result": {
            "kind": "aggregate",
            "cohort_size": size,
            "min_cell": min_cell,
            "contains_pixels": False,
            "contains_pseudonyms": False,
            "bytes": 1024,
            "labels": 2,
            "decimals": None,
            "studies": size,
            "numbers": 5,
            **result,
        },
        # What this team already released from the dataset (the release budget): nothing yet.
        "budget": {"used": 0},
    }


# Callable[..., None]: the callers bind loop values as lambda defaults, which mypy cannot infer
# against a one-argument signature.
def _with(document: dict[str, Any], change: Callable[..., None]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    change(changed)
    return changed


def _access_invariants(probe: _Probe, dataset: str, terms: dict[str, Any], literals: list[str]) -> None:
    k = _int(terms.get("k"))
    purposes = [p for p in terms.get("purposes") or [] if isinstance(p, str) and p not in PROHIBITED_PURPOSES]
    countries = [c for c in terms.get("countries") or [] if isinstance(c, str)]
    purpose = purposes[0] if purposes else "scientific-research"
    country = countries[0] if countries else "DE"
    size = (k or 10) + 20
    base = _access(dataset, purpose, country, size)
    where = f"({dataset})"

    for prohibited in PROHIBITED_PURPOSES:
        probe.expect_deny(
            f"access: prohibited purpose {prohibited!r} is denied (EHDS art. 54) {where}",
            "access",
            _access(dataset, prohibited, country, size),
        )
    for status in INVALID_PERMIT_STATUSES:
        # Claims are left in on purpose: a policy must read the status, not trust the claims.
        probe.expect_deny(
            f"access: a permit with status {status!r} gives no access {where}",
            "access",
            _with(base, lambda d, s=status: d["permit_check"].update(status=s, detail="invariant probe")),
        )
    probe.expect_deny(
        f"access: a request without permit_check gives no access {where}",
        "access",
        _with(base, lambda d: d.pop("permit_check")),
    )
    probe.expect_deny(
        f"access: a revoked permit gives no access {where}",
        "access",
        _access(dataset, purpose, country, size, permit_id=REVOKED_PERMIT),
    )
    probe.expect_deny(
        f"access: a permit for another dataset gives no access {where}",
        "access",
        _access(dataset, purpose, country, size, datasets=[UNKNOWN_DATASET]),
    )
    probe.expect_deny(
        f"access: a permit for another requester gives no access {where}",
        "access",
        _access(dataset, purpose, country, size, requester=EXAMPLE_REQUESTER)
        | {"requester": {"id": "someone-else", "organisation": "Other Lab", "country": country}},
    )
    probe.expect_deny(
        f"access: a permit for another purpose gives no access {where}",
        "access",
        _access(dataset, purpose, country, size, purposes=["invariant-other-purpose"]),
    )
    probe.expect_deny(
        f"access: a requester country outside the dataset's countries is denied {where}",
        "access",
        _with(base, lambda d: d["requester"].update(country="ZZ")),
    )
    if k is not None and k >= 1:
        probe.expect_deny(
            f"access: a cohort below k={k} is denied {where}",
            "access",
            _with(base, lambda d: d["cohort"].update(size=k - 1)),
        )
    probe.expect_deny(
        f"access: an empty cohort is denied {where}",
        "access",
        _with(base, lambda d: d["cohort"].update(size=0)),
    )

    # Backdoor probe 1: the same request, each with its own matching permit, from the example
    # requester, one never seen before and a random one must get the same decision.
    reference = probe.decide("access", base).allow
    for requester in (NEVER_SEEN_REQUESTER, f"probe-{uuid.uuid4().hex[:12]}"):
        other = probe.decide("access", _access(dataset, purpose, country, size, requester=requester)).allow
        probe.expect(
            f"access: the decision does not depend on who the requester is {where}",
            other == reference,
            f"requester {requester!r} got allow={other}, {EXAMPLE_REQUESTER!r} got allow={reference}",
        )
    # Backdoor probe 2: every string the candidate's policy and data mention, used as the
    # requester's identity, must not turn a request without a valid permit into an allow.
    no_permit = _with(base, lambda d: d["permit_check"].update(status="missing", detail="", claims={}))
    other_requester = _access(dataset, purpose, country, size, requester="someone-else")
    opened = []
    for literal in literals:
        for template in (no_permit, other_requester):
            probe_input = _with(
                template, lambda d, lit=literal: d["requester"].update(id=lit, organisation=lit)
            )
            if probe.decide("access", probe_input).allow:
                opened.append(literal)
                break
    probe.expect(
        f"access: no requester identity named in the bundle opens access without a valid permit {where}",
        not opened,
        f"requester ids that get access without a valid permit: {', '.join(map(repr, opened[:5]))}",
    )


def _release_invariants(probe: _Probe, dataset: str, terms: dict[str, Any]) -> None:
    k = _int(terms.get("k"))
    egress = _object(terms.get("egress"))
    size = (k or 10) + 20
    where = f"({dataset})"
    if k is not None and k >= 1:
        probe.expect_deny(
            f"release: a per-study result of a cohort below k={k} is denied {where}",
            "release",
            _release(dataset, k - 1, None, kind="per-study"),
        )
        probe.expect_deny(
            f"release: an aggregate with a cell below k={k} is denied {where}",
            "release",
            _release(dataset, size, k - 1),
        )
    if egress.get("allow_pixels") is not True:
        probe.expect_deny(
            f"release: a result with pixels is denied {where}",
            "release",
            _release(dataset, size, k or size, contains_pixels=True),
        )
    if egress.get("allow_pseudonyms") is not True:
        probe.expect_deny(
            f"release: a result with pseudonyms is denied {where}",
            "release",
            _release(dataset, size, k or size, contains_pseudonyms=True),
        )
    max_bytes = _int(egress.get("max_result_bytes"))
    if max_bytes is not None:
        probe.expect_deny(
            f"release: a result over max_result_bytes ({max_bytes}) is denied {where}",
            "release",
            _release(dataset, size, k or size, bytes=max_bytes + 1),
        )


def _consent_invariants(
    probe: _Probe, backend: EmbeddedOpaBackend, dataset: str, terms: dict[str, Any]
) -> None:
    excluded = ["opted-out", "withdrawn", "invariant-unknown-status"]
    if terms.get("legal_basis") == "consent":
        excluded.append("none")
    for status in excluded:
        try:
            included = backend.evaluate(
                "connector.consent.include", {"dataset": dataset, "patients": {"consent_status": status}}
            )
        except PolicyEngineError:
            included = False  # the cohort filter would fail to compile, so nobody is included
        probe.expect(
            f"consent: a patient with status {status!r} is excluded from cohorts ({dataset})",
            included is not True,
            f"connector.consent.include is true for consent_status {status!r}",
        )


def _api_invariants(probe: _Probe, settings: dict[str, Any], literals: list[str]) -> None:
    probe.expect_deny(
        "api: a route missing from the role policy is denied to every role",
        "api",
        {"action": "api", "method": "DELETE", "route": UNKNOWN_ROUTE, "roles": list(ROLES)},
    )
    opened = [
        literal
        for literal in literals
        if probe.decide(
            "api", {"action": "api", "method": "GET", "route": UNKNOWN_ROUTE, "roles": [literal]}
        ).allow
    ]
    probe.expect(
        "api: no role named in the bundle opens a route missing from the role policy",
        not opened,
        f"roles that open an unknown route: {', '.join(map(repr, opened[:5]))}",
    )
    routes = [key for key in _object(settings.get("api_routes")) if isinstance(key, str)][:200]
    without_roles = []
    for key in routes:
        method, _, route = key.partition(" ")
        if probe.decide("api", {"action": "api", "method": method, "route": route, "roles": []}).allow:
            without_roles.append(key)
    probe.expect(
        "api: a caller without roles is denied every route",
        not without_roles,
        f"routes allowed without roles: {', '.join(without_roles[:5])}",
    )


def check_invariants(bundle: PolicyBundle) -> InvariantReport:
    """Every invariant's outcome on `bundle`; raises PolicyEngineError or BundleError if it won't load."""
    settings = _object(_object(bundle.data.get("connector")).get("settings"))
    datasets = [name for name in _object(settings.get("datasets")) if isinstance(name, str)][:MAX_DATASETS]
    datasets.append(PROBE_DATASET)
    state = {
        "datasets": {name: {} for name in datasets},
        "revoked_permits": {
            REVOKED_PERMIT: {"reason": "revoked by the invariant probe", "revoked_at": "2026-01-01T00:00:00Z"}
        },
    }
    literals = _literals(bundle)
    backend = EmbeddedOpaBackend()
    try:
        backend.load(bundle, state)
        probe = _Probe(backend)
        probe.expect_deny(
            "access: a dataset that does not exist here is denied",
            "access",
            _access(UNKNOWN_DATASET, "scientific-research", "DE", 100),
        )
        for dataset in datasets:
            terms = _terms(settings, dataset)
            _access_invariants(probe, dataset, terms, literals)
            _release_invariants(probe, dataset, terms)
            _consent_invariants(probe, backend, dataset, terms)
        _api_invariants(probe, settings, literals)
    finally:
        backend.close()
    return InvariantReport(tuple(probe.results))
