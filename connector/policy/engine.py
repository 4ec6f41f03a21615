"""Policy backends: where Rego is evaluated. The embedded OPA engine lives here.

A backend holds one bundle and the connector's state document, evaluates documents and compiles
data filters. Two backends give the same answers on the same bundle: the embedded engine (OPA's
real Go evaluator in-process, the default) and an OPA server (`connector.policy.opa_server`).
Backends never decide anything themselves and never turn an error into an answer: every failure is
a PolicyEngineError, which callers turn into a deny.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Literal, Protocol

from connector.policy.bundle import PolicyBundle

SqlDialect = Literal["postgresql", "sqlite"]

HEALTH_MODULE = """package connector_health

ready if {
\tcount([x | some x in [1, 2, 3]; x > 1]) == 2
}
"""


class PolicyEngineError(Exception):
    """The policy engine cannot evaluate; the message says why."""


class PolicyBackend(Protocol):
    name: str

    def load(self, bundle: PolicyBundle, state: dict[str, Any]) -> None:
        """Replace every module and data document with `bundle`, and `data.connector.state` with `state`.

        On any error the previously loaded bundle stays in force.
        """

    def set_state(self, state: dict[str, Any]) -> None:
        """Replace `data.connector.state` (datasets, revoked permits) and keep the bundle."""

    def evaluate(self, path: str, input: Any) -> Any:
        """The value of `data.<path>` (dotted), or None when undefined."""

    def compile_filter(
        self, path: str, input: dict[str, Any], unknowns: list[str], dialect: SqlDialect
    ) -> str | None:
        """A SQL condition for rule `data.<path>` with `unknowns` left open.

        "" means always true, None means never true.
        """

    def check(self) -> None:
        """Raise PolicyEngineError unless the backend evaluates a known program correctly."""

    def close(self) -> None: ...


def _new_engine() -> Any:
    try:
        from opa_bindings import OpaEngine
    except ImportError as exc:
        raise PolicyEngineError(
            "the embedded OPA engine is not installed: pip install --no-deps --ignore-requires-python "
            "opa-golib-python-bindings==0.4.4"
        ) from exc
    return OpaEngine()


def state_document(state: dict[str, Any]) -> dict[str, Any]:
    return {"connector": {"state": state}}


def where_clause(query: Any) -> str | None:
    """OPA's filter answer as a bare condition: None never, "" always, else the condition text."""
    if query is None:
        return None
    if isinstance(query, str):
        text = query.strip()
        return text[len("WHERE ") :].strip() if text.upper().startswith("WHERE ") else text
    raise PolicyEngineError(f"the policy engine returned a filter that is not SQL: {json.dumps(query)[:200]}")


class EmbeddedOpaBackend:
    """One in-process OPA engine per loaded bundle; a reload builds a new engine and swaps it in."""

    name = "embedded"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bundle: PolicyBundle | None = None
        self._state: dict[str, Any] = {}
        self._engine: Any = self._build(None, {})

    def _build(self, bundle: PolicyBundle | None, state: dict[str, Any]) -> Any:
        from opa_bindings.engine import OpaError

        engine = _new_engine()
        try:
            engine.add_policy("connector_health.rego", HEALTH_MODULE)
            if bundle is not None:
                for name, source in sorted(bundle.modules.items()):
                    engine.add_policy(name, source)
                engine.add_data(bundle.data)
            engine.add_data(state_document(state))
            # Compile now: errors in a module would otherwise surface on the first evaluation.
            engine.eval_document("connector_health.ready")
        except OpaError as exc:
            engine.close()
            raise PolicyEngineError(exc.message) from None
        return engine

    def _swap(self, engine: Any, bundle: PolicyBundle | None, state: dict[str, Any]) -> None:
        # The old engine is not closed here: a thread may still be evaluating on it. It closes
        # itself when the last reference goes.
        with self._lock:
            self._engine, self._bundle, self._state = engine, bundle, state

    def load(self, bundle: PolicyBundle, state: dict[str, Any]) -> None:
        self._swap(self._build(bundle, state), bundle, state)

    def set_state(self, state: dict[str, Any]) -> None:
        # Data merges in OPA cannot remove keys (an un-revoked permit), so a new engine is built.
        self._swap(self._build(self._bundle, state), self._bundle, state)

    def evaluate(self, path: str, input: Any) -> Any:
        from opa_bindings.engine import OpaError, OpaUndefinedError

        engine = self._engine
        try:
            return engine.eval_document(path, input)
        except OpaUndefinedError:
            return None
        except OpaError as exc:
            raise PolicyEngineError(f"evaluating {path} failed: {exc.message}") from None

    def evaluate_with_coverage(self, query: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Bindings of a query and the coverage report of that evaluation (for `policy test`)."""
        from opa_bindings.engine import OpaError

        engine = self._engine
        with self._lock:
            try:
                bindings = engine.eval_query(query, coverage=True)
            except OpaError as exc:
                raise PolicyEngineError(f"evaluating {query} failed: {exc.message}") from None
            return bindings, engine.last_coverage

    def compile_filter(
        self, path: str, input: dict[str, Any], unknowns: list[str], dialect: SqlDialect
    ) -> str | None:
        from opa_bindings.engine import OpaError

        engine = self._engine
        try:
            result = engine.compile_filters(f"data.{path}", input, unknowns=unknowns, dialect=dialect)
        except OpaError as exc:
            raise PolicyEngineError(f"compiling {path} into a filter failed: {exc.message}") from None
        return where_clause(result.get("query") if isinstance(result, dict) else None)

    def check(self) -> None:
        result = self.evaluate("connector_health.ready", None)
        if result is not True:
            raise PolicyEngineError(f"the policy engine gave a wrong answer: {result!r}")

    def close(self) -> None:
        self._engine.close()
