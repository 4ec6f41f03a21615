"""Request context for every call: a request id, a bounded body, one access log line.

The access line carries method, path (never the query string, which may hold a token), status,
duration, request id and the caller's subject. It never logs headers or bodies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector.observability.context import accept_request_id, request_id_var

log = logging.getLogger("connector.access")


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, large_body_paths: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Routes that take files (a model package) get their own, larger bound.
        self.large_body_paths = dict(large_body_paths or {})

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

        limit = self.large_body_paths.get(scope.get("path", ""), self.max_body_bytes)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject_too_large(send, request_id, limit)
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

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, bounded_receive, send_with_id)
        except BodyTooLarge:
            await self._reject_too_large(send, request_id, limit)
            status["code"] = 413
        finally:
            self._access(scope, status["code"], started)
            request_id_var.reset(token)

    async def _reject_too_large(self, send: Send, request_id: str, limit: int) -> None:
        body = json.dumps(
            {
                "error": "payload_too_large",
                "detail": f"request body exceeds {limit} bytes",
                "request_id": request_id,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
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
