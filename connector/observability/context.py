"""The request id of the work in progress, shared by logs, errors and the audit trail.

It must never hold anything but an opaque id: no user data, no token.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# Accept a caller's id only when it cannot smuggle anything into a log line.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_request_id() -> str:
    return secrets.token_hex(12)


def accept_request_id(candidate: str | None) -> str:
    """The caller's X-Request-ID when it is a short safe token, else a fresh one."""
    if candidate and _SAFE_ID.match(candidate):
        return candidate
    return new_request_id()
