"""The embedded OPA engine (OPA's real Rego evaluator, in-process).

This module only wraps the engine and proves it evaluates; policy decisions live with the
policies. It must never decide anything itself.
"""

from __future__ import annotations

import threading

_HEALTH_MODULE = """package connector.health

import rego.v1

ready if {
\tcount([x | some x in [1, 2, 3]; x > 1]) == 2
}
"""


class PolicyEngineError(Exception):
    """The policy engine cannot evaluate; the message says why."""


class EmbeddedOpaEngine:
    """One in-process OPA engine (opa-golib-python-bindings), shared under a lock."""

    def __init__(self) -> None:
        try:
            from opa_bindings import OpaEngine
        except ImportError as exc:
            raise PolicyEngineError(
                "the embedded OPA engine is not installed: pip install --no-deps --ignore-requires-python "
                "opa-golib-python-bindings==0.4.4"
            ) from exc
        self._engine = OpaEngine()
        self._lock = threading.Lock()
        self._engine.add_policy("connector/health.rego", _HEALTH_MODULE)

    def check(self) -> None:
        """Raise PolicyEngineError unless a small Rego program evaluates to the known answer."""
        with self._lock:
            try:
                result = self._engine.eval_document("connector.health.ready")
            except Exception as exc:
                raise PolicyEngineError(f"the policy engine failed to evaluate: {exc}") from None
        if result is not True:
            raise PolicyEngineError(f"the policy engine gave a wrong answer: {result!r}")
