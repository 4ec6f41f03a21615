"""Policy backends: where Rego is evaluated. The embedded OPA engine lives here.

A backend holds one bundle and the connector's state document, evaluates documents and compiles
data filters. Two backends give the same answers on the same bundle: the embedded engine (OPA's
real Go evaluator in-process, the default) and an OPA server (`connector.policy.opa_server`).
Backends never decide anything themselves and never turn an error into an answer: every failure is
a PolicyEngineError, which callers turn into a deny. Nothing here changes the process environment
(`restart_with_go_runtime_settings` starts the process again with another one, when asked).

Go runtime settings of the embedded engine (what causes the decision latency tail)
---------------------------------------------------------------------------------
The embedded engine is a Go shared library with its own Go runtime and garbage collector. One full
access decision allocates about 100 KB on the Go heap (input parsing, evaluation, the answer),
while the live Go heap is about 4-5 MB per distinct query path (the bindings compile the whole
bundle once per path). With Go's defaults (GOGC=100) a collection starts every ~90 decisions and
marks for ~30 ms concurrently; every decision in that window is slower (mark assists, write
barriers, GC worker threads taking the CPUs), so p99 is several ms at a p50 of ~0.5 ms. The
opt-out registry never reaches the engine (a decision gets counts; cohorts are filtered in SQL),
so the number of opt-outs does not change this.

`GO_RUNTIME_SETTINGS` fix that: no collection by heap growth (GOGC=off) until the Go heap reaches
GOMEMLIMIT (so one every ~2,000 decisions), and each collection stop-the-world
(GODEBUG=gcstoptheworld=1: one pause of ~10-25 ms instead of ~30 ms of slowed decisions), so about
one decision in 2,000 is slow instead of one in three; the slowest is that pause. The price is
memory: the Go heap of the process grows to about GOMEMLIMIT before it is collected. GOMEMLIMIT
must stay well above the live Go heap (about 5 MB per decision path evaluated with the shipped
bundle, twice that while a reload swaps engines; 15-40 MB in a running connector): a limit near it
makes the collector run back to back (with 32MiB and a 16 MB live heap, decisions got 5 times
slower), so a much larger bundle needs a larger GOMEMLIMIT.

The Go runtime of a shared library reads these once, when the library is loaded, from the
environment the *process was started with* (the block after argv), not from libc's current
environment: assigning `os.environ` in Python before loading has no effect on it (checked with
GODEBUG=gctrace=1). So they must be in the environment of the process when it is started (the
service unit, container or launcher); `go_runtime_environment()` gives that environment, and values
set there by the operator always win. `go_runtime_settings()` tells what this process's runtime
read. The long-running commands (`connector serve`, `connector worker`) call
`restart_with_go_runtime_settings()` first thing, which re-executes the process once with that
environment where a setting is missing; nothing else here ever re-executes the process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from connector.policy.bundle import PolicyBundle

SqlDialect = Literal["postgresql", "sqlite"]

HEALTH_MODULE = """package connector_health

ready if {
\tcount([x | some x in [1, 2, 3]; x > 1]) == 2
}
"""


class PolicyEngineError(Exception):
    """The policy engine cannot evaluate; the message says why."""


log = logging.getLogger("connector.policy")

# What the process running the embedded engine should be started with (see the module docstring).
# GODEBUG holds comma-separated key=value settings, merged key by key with the operator's own.
GO_RUNTIME_SETTINGS: Final[Mapping[str, str]] = {
    "GOGC": "off",
    "GOMEMLIMIT": "256MiB",
    "GODEBUG": "gcstoptheworld=1",
}


def _godebug(value: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in value.split(",") if item.strip())
    return {key.strip(): setting.strip() for key, _, setting in pairs}


def go_runtime_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` with the Go runtime settings added where the operator has not set them.

    For a launcher that starts a process running the embedded engine; values in `environ` win.
    """
    result = dict(environ)
    for name, value in GO_RUNTIME_SETTINGS.items():
        if name == "GODEBUG":
            merged = {**_godebug(value), **_godebug(result.get(name, ""))}
            result[name] = ",".join(f"{key}={setting}" for key, setting in merged.items())
        else:
            result.setdefault(name, value)
    return result


def _start_environment() -> dict[str, str] | None:
    """The environment this process was started with, as the Go runtime sees it; None if unknown."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def go_runtime_settings() -> dict[str, str | None]:
    """The value of each Go runtime setting this process was started with (None: Go's default).

    GODEBUG is reported key by key, e.g. {"GODEBUG=gcstoptheworld": "1"}. Raises
    PolicyEngineError when the start environment cannot be read (not Linux).
    """
    start = _start_environment()
    if start is None:
        raise PolicyEngineError("the environment this process was started with cannot be read")
    settings: dict[str, str | None] = {}
    for name, value in GO_RUNTIME_SETTINGS.items():
        if name == "GODEBUG":
            own = _godebug(start.get(name, ""))
            settings.update({f"GODEBUG={key}": own.get(key) for key in _godebug(value)})
        else:
            settings[name] = start.get(name)
    return settings


def restart_with_go_runtime_settings() -> None:
    """Replace this process by itself started with `GO_RUNTIME_SETTINGS` where any is missing.

    For the long-running commands (`connector serve`, `connector worker`), called before anything
    is loaded: the same pid, arguments and environment, plus the missing settings (the operator's
    own values win, so `GOGC=100` keeps Go's default). Returns without doing anything when every
    setting is already given or the start environment cannot be read. Never call it from a process
    that holds state worth keeping: it does not return when it restarts.
    """
    try:
        settings = go_runtime_settings()
    except PolicyEngineError:
        return
    if all(value is not None for value in settings.values()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # The same interpreter and arguments this process was started with: no shell, nothing new.
    os.execve(sys.executable, sys.orig_argv, go_runtime_environment(os.environ))  # noqa: S606


_checked_go_runtime = False


def _note_go_runtime() -> None:
    """Say once per process when the embedded engine runs with Go's default collector settings."""
    global _checked_go_runtime
    if _checked_go_runtime:
        return
    _checked_go_runtime = True
    try:
        unset = [name for name, value in go_runtime_settings().items() if value is None]
    except PolicyEngineError:
        return
    if unset:
        log.info(
            "the embedded OPA engine runs with Go's default settings for %s: decisions have a "
            "latency tail of several ms; start the process with %s (connector.policy.engine)",
            ", ".join(unset),
            " ".join(f"{name}={value}" for name, value in GO_RUNTIME_SETTINGS.items()),
        )


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
    _note_go_runtime()
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
