"""A small OPA-REST-compatible TEST server, backed by the real OPA engine in-process.

No OPA server binary can be installed on these machines, so the tests of the OPA-server policy
backend (`connector.policy.opa_server`) talk to this stand-in instead. It serves the part of OPA's
REST API (v1, docs/docs/rest-api.md of open-policy-agent/opa) that the connector uses, with OPA's
status codes and error bodies, and evaluates with OPA's own Go evaluator (opa-golib-python-bindings,
OPA v1.20.2):

- `GET /health`;
- `GET /v1/policies`, `GET/PUT/DELETE /v1/policies/{id}` (a module that does not parse or compile
  next to the others is refused with 400 and the previous set stays; unknown ids answer 404; as in
  OPA 1.x, `/v1/policies/` with a trailing slash is the policy with the empty id, not the list);
- `GET/PUT/DELETE /v1/data/{path}`, `GET/PUT /v1/data` (a PUT replaces the document at its path,
  creating parents; `If-None-Match: *`), `POST /v1/data/{path}` with `{"input": ...}`;
- `POST /v1/compile/{path}` with `Accept: application/vnd.opa.sql.{postgresql,sqlite,mysql,sqlserver}+json`
  and `{"input": ..., "unknowns": [...]}` (options are ignored);
- an optional bearer token, required on every route (401 otherwise).

For failure tests, `inject_failure` may be set to a function of (method, path) that picks requests
to answer with 500, as an OPA whose storage fails would.

It is a test fixture, never a policy server to deploy: it listens on 127.0.0.1 only (a free port),
has no TLS, bundles, decision logs or JSON Patch (PATCH answers 501), omits the AST from policy
listings, and rebuilds its one engine from the stored modules and data on every change (the engine
cannot remove a module or a data key).
"""

from __future__ import annotations

import copy
import hmac
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from opa_bindings import OpaEngine, OpaError

HOST = "127.0.0.1"
COMPILE_MEDIA_TYPES = {
    "application/vnd.opa.sql.postgresql+json": "postgresql",
    "application/vnd.opa.sql.sqlite+json": "sqlite",
    "application/vnd.opa.sql.mysql+json": "mysql",
    "application/vnd.opa.sql.sqlserver+json": "sqlserver",
}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ERROR_LINE = re.compile(r"^(?P<file>.+?):(?P<row>\d+): (?P<code>rego_\w+_error): (?P<message>.*)$")
MSG_COMPILE_MODULE_ERROR = "error(s) occurred while compiling module(s)"


class _Reply(Exception):
    """An HTTP answer: status, JSON body (None for no body) and content type."""

    def __init__(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def _error(status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None) -> _Reply:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return _Reply(status, body)


def _ast_errors(exc: OpaError) -> list[dict[str, Any]]:
    """OPA's error list from the engine's message ("N errors occurred: file:row: code: message")."""
    found = []
    for line in exc.message.replace("bundle activation failed: ", "").split("\n"):
        line = re.sub(r"^\d+ errors? occurred:\s*", "", line)
        match = _ERROR_LINE.match(line)
        if match:
            found.append(
                {
                    "code": match["code"],
                    "message": match["message"],
                    "location": {"file": match["file"], "row": int(match["row"])},
                }
            )
    return found or [{"code": exc.code, "message": exc.message}]


def _ref(segments: list[str]) -> str:
    """A Rego reference to data.<segments> (identifiers dotted, other keys quoted)."""
    ref = "data"
    for segment in segments:
        ref += f".{segment}" if _IDENTIFIER.match(segment) else f"[{json.dumps(segment)}]"
    return ref


class OpaRestTestServer:
    """One test OPA on 127.0.0.1; `start()` returns once it listens, `stop()` closes it."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        # Test-only fault injection: requests for which this returns True are answered with a 500.
        self.inject_failure: Callable[[str, str], bool] | None = None
        self._lock = threading.Lock()
        self._modules: dict[str, str] = {}
        self._data: dict[str, Any] = {}
        self._engine = self._build(self._modules, self._data)
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> OpaRestTestServer:
        self._http = ThreadingHTTPServer((HOST, 0), _Handler)
        self._http.daemon_threads = True
        self._http.opa = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="opa-rest-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> OpaRestTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._http is None:
            raise RuntimeError("the test OPA server is not running")
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- what tests may look at ----------------------------------------------------------------

    def policies(self) -> dict[str, str]:
        with self._lock:
            return dict(self._modules)

    def data(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._data)

    # -- the engine ----------------------------------------------------------------------------

    @staticmethod
    def _build(modules: dict[str, str], data: dict[str, Any]) -> OpaEngine:
        """A new engine with `modules` and `data`, compiled now (OpaError if they do not compile)."""
        engine = OpaEngine()
        try:
            for identifier, source in sorted(modules.items()):
                engine.add_policy(identifier, source)
            if data:
                engine.add_data(data)
            engine.eval_query("x = 1")  # compiles every module: errors surface here, not later
        except OpaError:
            engine.close()
            raise
        return engine

    def _install(self, modules: dict[str, str], data: dict[str, Any]) -> None:
        """Swap in a new engine, or raise a 400 and keep the old one. Called under the lock."""
        try:
            engine = self._build(modules, data)
        except OpaError as exc:
            raise _error(400, "invalid_parameter", MSG_COMPILE_MODULE_ERROR, _ast_errors(exc)) from None
        # The old engine closes itself once no request thread evaluates on it any more.
        self._engine, self._modules, self._data = engine, modules, data

    # -- routes --------------------------------------------------------------------------------

    def health(self) -> _Reply:
        try:
            self._engine.eval_query("x = 1")
        except OpaError:
            return _Reply(500, {"error": "unable to perform evaluation"})
        return _Reply(200, {})

    def list_policies(self) -> _Reply:
        with self._lock:
            modules = dict(self._modules)
        return _Reply(200, {"result": [{"id": key, "raw": raw} for key, raw in sorted(modules.items())]})

    def get_policy(self, identifier: str) -> _Reply:
        with self._lock:
            raw = self._modules.get(identifier)
        if raw is None:
            raise _error(404, "resource_not_found", f'storage_not_found_error: policy id "{identifier}"')
        return _Reply(200, {"result": {"id": identifier, "raw": raw}})

    def put_policy(self, identifier: str, body: bytes) -> _Reply:
        try:
            source = body.decode("utf-8")
        except UnicodeDecodeError:
            raise _error(400, "invalid_parameter", "policy is not UTF-8 text") from None
        with self._lock:
            self._install({**self._modules, identifier: source}, self._data)
        return _Reply(200, {})

    def delete_policy(self, identifier: str) -> _Reply:
        with self._lock:
            if identifier not in self._modules:
                raise _error(404, "resource_not_found", f'storage_not_found_error: policy id "{identifier}"')
            remaining = {key: raw for key, raw in self._modules.items() if key != identifier}
            self._install(remaining, self._data)
        return _Reply(200, {})

    def get_data(self, segments: list[str], input_value: Any = None) -> _Reply:
        """The document at `segments` ({} when undefined); `input_value` None means no input."""
        engine = self._engine
        try:
            bindings = engine.eval_query(f"x := {_ref(segments)}", input_value)
        except OpaError as exc:
            raise _error(500, "internal_error", exc.message) from None
        return _Reply(200, {"result": bindings[0]["x"]} if bindings else {})

    def put_data(self, segments: list[str], value: Any, if_none_match: bool) -> _Reply:
        with self._lock:
            document = copy.deepcopy(self._data)
            if not segments:
                if not isinstance(value, dict):
                    raise _error(400, "invalid_parameter", "the root document must be an object")
                self._install(dict(self._modules), value)
                return _Reply(204)
            node = document
            for segment in segments[:-1]:
                child = node.setdefault(segment, {})
                if not isinstance(child, dict):
                    raise _error(
                        404, "resource_conflict", f"storage_write_conflict_error: /{'/'.join(segments)}"
                    )
                node = child
            if if_none_match and segments[-1] in node:
                return _Reply(304)
            node[segments[-1]] = value
            self._install(dict(self._modules), document)
        return _Reply(204)

    def delete_data(self, segments: list[str]) -> _Reply:
        with self._lock:
            document = copy.deepcopy(self._data)
            node: Any = document
            for segment in segments[:-1]:
                node = node.get(segment) if isinstance(node, dict) else None
            if not isinstance(node, dict) or segments[-1] not in node:
                raise _error(404, "resource_not_found", f"storage_not_found_error: /{'/'.join(segments)}")
            del node[segments[-1]]
            self._install(dict(self._modules), document)
        return _Reply(204)

    def compile_filters(self, segments: list[str], accept: str, body: dict[str, Any]) -> _Reply:
        if not accept:
            raise _error(400, "invalid_parameter", "Accept header: missing required header")
        dialect = COMPILE_MEDIA_TYPES.get(accept)
        if dialect is None:
            raise _error(400, "invalid_parameter", f"Accept header: unsupported header: {accept}")
        unknowns = body.get("unknowns") or ["input"]
        if not isinstance(unknowns, list) or not all(isinstance(item, str) for item in unknowns):
            raise _error(400, "invalid_parameter", "error(s) occurred while parsing unknowns")
        engine = self._engine
        try:
            result = engine.compile_filters(
                _ref(segments), body.get("input"), unknowns=unknowns, dialect=dialect
            )
        except OpaError as exc:
            raise _error(
                400, "evaluation_error", "error(s) occurred while evaluating query", _ast_errors(exc)
            ) from None
        query = result.get("query") if isinstance(result, dict) else None
        # OPA leaves `result` out when the rule can never be true ("unconditional deny").
        answer: dict[str, Any] = {} if query is None else {"result": {"query": query}}
        if query is not None and result.get("masks"):
            answer["result"]["masks"] = result["masks"]
        return _Reply(200, answer, content_type=accept)

    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        expected = f"Bearer {self.token}".encode()
        return header is not None and hmac.compare_digest(header.encode("utf-8", "replace"), expected)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as OPA; every answer carries Content-Length
    timeout = 30  # an idle keep-alive connection ends its thread after this long
    server_version = "opa-rest-test-server"
    # Headers and body are separate writes: with Nagle on, each keep-alive answer would wait ~40 ms
    # for the client's delayed ACK, which no real OPA server does.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read answers, not access logs."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        opa: OpaRestTestServer = self.server.opa  # type: ignore[attr-defined]
        try:
            if not opa.authorized(self.headers.get("Authorization")):
                raise _error(401, "unauthorized", "request rejected by administrative policy")
            path = urlsplit(self.path).path
            if opa.inject_failure is not None and opa.inject_failure(method, path):
                raise _error(500, "internal_error", "injected failure (test server)")
            reply = self._route(opa, method, path, body)
        except _Reply as answer:
            reply = answer
        except Exception as exc:  # a bug in this test server: answer like OPA would, never hang
            reply = _error(500, "internal_error", f"{type(exc).__name__}: {exc}")
        self._send(reply)

    def _route(self, opa: OpaRestTestServer, method: str, path: str, body: bytes) -> _Reply:
        if path == "/health":
            return opa.health() if method == "GET" else _Reply(405, {})
        if path == "/v1/policies":
            return opa.list_policies() if method == "GET" else _Reply(405, {})
        if path.startswith("/v1/policies/"):
            identifier = unquote(path[len("/v1/policies/") :])
            if method == "GET":
                return opa.get_policy(identifier)
            if method == "PUT":
                return opa.put_policy(identifier, body)
            if method == "DELETE":
                return opa.delete_policy(identifier)
            return _Reply(405, {})
        if path == "/v1/data" or path.startswith("/v1/data/"):
            segments = [unquote(part) for part in path[len("/v1/data") :].split("/") if part]
            if method == "GET":
                return opa.get_data(segments)
            if method == "POST":
                request = self._json(body) if body else {}
                if not isinstance(request, dict):
                    raise _error(400, "invalid_parameter", "the request body must be a JSON object")
                # As in OPA, {"input": null} is no input.
                return opa.get_data(segments, request.get("input"))
            if method == "PUT":
                return opa.put_data(segments, self._json(body), self.headers.get("If-None-Match") == "*")
            if method == "DELETE" and segments:
                return opa.delete_data(segments)
            if method == "PATCH":
                return _error(501, "internal_error", "JSON Patch is not implemented by this test server")
            return _Reply(405, {})
        if path.startswith("/v1/compile/") and method == "POST":
            segments = [unquote(part) for part in path[len("/v1/compile/") :].split("/") if part]
            request = self._json(body) if body else {}
            if not isinstance(request, dict) or not segments:
                raise _error(400, "invalid_parameter", "error(s) occurred while decoding request")
            return opa.compile_filters(segments, self.headers.get("Accept", ""), request)
        return _Reply(404, "404 page not found\n", content_type="text/plain; charset=utf-8")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _error(400, "invalid_parameter", f"body contains malformed JSON: {exc}") from None

    def _send(self, reply: _Reply) -> None:
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, str):
            payload = reply.body.encode("utf-8")
        else:
            payload = json.dumps(reply.body).encode("utf-8")
        self.send_response(reply.status)
        if payload:
            self.send_header("Content-Type", reply.content_type)
        if reply.status not in (204, 304):  # answers that never carry a body
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)
