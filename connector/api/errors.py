"""One error format for every 4xx and 5xx: `{"error": code, "detail": human text}`.

Validation errors name the field but never echo the submitted value (it may be PHI or a token);
unexpected errors say nothing about internals beyond the request id.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from connector.identity.errors import AuthError, ForbiddenError
from connector.observability.context import request_id_var

log = logging.getLogger("connector.api")

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from a route to answer with `status` and a machine-readable `code`."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def error_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail, **extra}
    # The id the request middleware gave THIS request (kept in its scope, which outlives the context
    # variable: a handler may run after the middleware's context ended); the variable otherwise.
    state = request.scope.get("state") if request is not None else None
    request_id = (state.get("request_id") if isinstance(state, dict) else None) or request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [{"field": _field(item["loc"]), "problem": item["msg"]} for item in exc.errors()]
    detail = "; ".join(f"{item['field']}: {item['problem']}" for item in fields) or "invalid request"
    return error_response(422, "invalid_request", detail, request=request, fields=fields)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None), request)


async def _api(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, request=request, **exc.extra)


async def _auth(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    # RFC 6750: say why in the WWW-Authenticate header too, without echoing the token.
    header = f'Bearer error="invalid_token", error_description="{exc.code}"'
    if exc.code == "missing_token":
        header = "Bearer"
    return error_response(401, exc.code, exc.detail, {"WWW-Authenticate": header}, request)


async def _forbidden(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ForbiddenError)
    return error_response(403, exc.code, exc.detail, request=request)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Normally the request middleware answers a 500 itself (inside the request's context); this
    # handler is the outermost fallback and still names the request from its scope.
    log.error("unhandled error", exc_info=exc)
    return error_response(
        500, "internal_error", "the connector hit an unexpected error; quote the request id", request=request
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ApiError, _api)
    app.add_exception_handler(AuthError, _auth)
    app.add_exception_handler(ForbiddenError, _forbidden)
    app.add_exception_handler(Exception, _unexpected)
