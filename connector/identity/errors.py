"""Authentication (401) and authorisation (403) failures with machine-readable codes.

Details are human text for the caller; they must never contain the token or any key material.
"""

from __future__ import annotations


class AuthError(Exception):
    """The caller could not be authenticated. `code` is stable; `detail` explains it."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class ForbiddenError(Exception):
    """The caller is authenticated but none of their roles is admitted."""

    code = "forbidden_role"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
