"""Request context for every call: a request id, a bounded body, bounded JSON nesting, one access
log line, and a last-resort 500 that still names the request.

JSON bodies are measured before anything parses them: a byte scan of the brackets outside strings
(no parse, no recursion), so a body nested 50,000 deep is a 400 `json_too_deep` before any route,
token check or parser sees it. The access line carries method, path (never the query string, which
may hold a token), status, duration, request id and the caller's subject. It never logs headers or
bodies, and no error body ever holds anything but the code, a fixed text and the request id.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.observability.context import accept_request_id, request_id_var

log = logging.getLogger("connector.access")
errors_log = logging.getLogger("connector.api")

# (path, code, detail, request id) -> the error document; lets /dsp answer in the protocol's shape.
ErrorBody = Callable[[str, str, str, str], dict[str, Any]]

# A JSON string (escapes included); its brackets are text, not nesting. An unterminated one runs to
# the end of the body: every quote then starts a match that succeeds, so the scan stays linear (a
# pattern that could fail at a quote would be retried from each later quote: quadratic in a body
# of escaped quotes, minutes for one request).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")


def json_nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether `raw` nests arrays/objects deeper than `limit` (or may: unclosed brackets count).

    No parse and no recursion: strings are cut out, the brackets kept, and each pass removes the
    innermost pairs (`[]`), so `limit` passes of `bytes.replace` (C speed) settle the question.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # the common case: too few brackets to be too deep
    brackets = _JSON_STRING.sub(b"", raw).translate(_AS_SQUARE, _NOT_BRACKETS)
    passes = 0
    while passes < limit and brackets:
        reduced = brackets.replace(b"[]", b"")
        if reduced == brackets:
            break  # only unmatched brackets are left; each open one may nest one more level
        brackets, passes = reduced, passes + 1
    return passes + brackets.count(b"[") > limit


class BodyTooLarge(Exception):
    pass


def _default_error_body(_path: str, code: str, detail: str, request_id: str) -> dict[str, Any]:
    return {"error": code, "detail": detail, "request_id": request_id}


def _is_json(path: str, content_type: str | None, json_prefixes: Sequence[str]) -> bool:
    # FastAPI parses a body as JSON when it says so or says nothing; the /dsp routes always do.
    if any(path.startswith(prefix) for prefix in json_prefixes):
        return True
    return content_type is None or "json" in content_type.lower()


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        large_body_paths: Mapping[str, int] | None = None,
        max_json_depth: int = 64,
        error_bodies: Sequence[tuple[str, ErrorBody]] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Routes that take files (a model package) get their own, larger bound.
        self.large_body_paths = dict(large_body_paths or {})
        self.max_json_depth = max_json_depth
        # Path prefixes whose errors take another shape (the DSP's error messages), longest first.
        self.error_bodies = sorted(error_bodies, key=lambda item: -len(item[0]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        request_id = accept_request_id(headers.get("x-request-id"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = {"code": 500}
        scope.setdefault("state", {})["request_id"] = request_id

        path = scope.get("path", "")
        limit = self.large_body_paths.get(path, self.max_body_bytes)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(
                send, path, request_id, 413, "payload_too_large", f"request body exceeds {limit} bytes"
            )
            self._access(scope, 413, started)
            request_id_var.reset(token)
            return

        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            downstream_receive: Receive = bounded_receive
            prefixes = [prefix for prefix, _ in self.error_bodies]
            if scope.get("method") not in ("GET", "HEAD") and _is_json(
                path, headers.get("content-type"), prefixes
            ):
                raw, downstream_receive = await self._buffered(bounded_receive)
                if json_nesting_exceeds(raw, self.max_json_depth):
                    detail = f"the JSON body nests deeper than {self.max_json_depth} levels"
                    await self._reject(send, path, request_id, 400, "json_too_deep", detail)
                    status["code"] = 400
                    return
            await self.app(scope, downstream_receive, send_with_id)
        except BodyTooLarge:
            await self._reject(
                send, path, request_id, 413, "payload_too_large", f"request body exceeds {limit} bytes"
            )
            status["code"] = 413
        except Exception as exc:
            # The last resort: the error handlers did not answer. Answer here, inside the request's
            # context, so the 500 still names this request (body and header) and says nothing else.
            if response_started:
                raise
            errors_log.error("unhandled error", exc_info=exc)
            detail = "the connector hit an unexpected error; quote the request id"
            await self._reject(send, path, request_id, 500, "internal_error", detail)
            status["code"] = 500
        finally:
            self._access(scope, status["code"], started)
            request_id_var.reset(token)

    @staticmethod
    async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (already bounded by `receive`), and a receive that replays it."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # a disconnect: the app will see an empty body and the next receive
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return raw, replay

    async def _reject(
        self, send: Send, path: str, request_id: str, status: int, code: str, detail: str
    ) -> None:
        shape = next((shape for prefix, shape in self.error_bodies if path.startswith(prefix)), None)
        body = json.dumps((shape or _default_error_body)(path, code, detail, request_id)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _access(scope: Scope, status: int, started: float) -> None:
        state: dict[str, Any] = scope.get("state", {})
        log.info(
            "%s %s %s",
            scope.get("method"),
            scope.get("path"),
            status,
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "subject": state.get("subject"),
            },
        )
