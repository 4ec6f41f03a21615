"""A policy decision as the rest of the connector sees it: allow, reasons, obligations, version.

`decision_from_document` turns what Rego returned into a Decision and fails closed: anything that
is not exactly the documented shape becomes a deny that says why. It never allows by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# The decision documents a policy bundle must define (data.connector.decision.<name>).
POLICIES = ("access", "release", "api")


@dataclass(frozen=True)
class Decision:
    allow: bool
    reasons: tuple[str, ...]
    obligations: tuple[str, ...] = ()
    policy_version: str | None = None

    @classmethod
    def deny(cls, reasons: Iterable[str], policy_version: str | None = None) -> Decision:
        return cls(False, tuple(reasons), (), policy_version)

    def to_json(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "reasons": list(self.reasons),
            "obligations": list(self.obligations),
            "policy_version": self.policy_version,
        }


def _strings(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return tuple(value)


def decision_from_document(document: Any, policy_version: str | None) -> Decision:
    """The Decision a `data.connector.decision.<policy>` document states; a deny if it is malformed."""
    if not isinstance(document, dict):
        return Decision.deny(
            [f"the policy returned no decision document (got {type(document).__name__})"], policy_version
        )
    allow, reasons, obligations = (
        document.get("allow"),
        _strings(document.get("reasons", [])),
        _strings(document.get("obligations", [])),
    )
    if not isinstance(allow, bool) or reasons is None or obligations is None:
        return Decision.deny(
            [
                "the policy's decision document is malformed (allow must be a boolean, reasons and "
                "obligations lists of strings)"
            ],
            policy_version,
        )
    if allow is False and not reasons:
        reasons = ("denied by policy (the policy gave no reason)",)
    return Decision(allow, reasons, obligations, policy_version)
