"""Authentication (401) and authorisation (403) failures with machine-readable codes.

`detail` is human text for the caller and the log. It must never contain the token, a key, or
anything else that would let a reader of the log act as the caller.
"""

from __future__ import annotations

# Every code an AuthError carries; the API answers 401 with it, clients may branch on it.
AUTH_ERROR_CODES = frozenset(
    {
        "missing_token",  # no Authorization header / empty token
        "malformed_token",  # not "Bearer <jwt>", not a JWT, or a claim of the wrong type
        "unknown_issuer",  # `iss` is none of the trusted issuers
        "unknown_key",  # the issuer publishes no key with the token's `kid`
        "invalid_signature",  # the signature does not verify (forged or altered)
        "unsupported_algorithm",  # `alg` not allowed for the issuer (none, HS*, or not configured)
        "token_expired",  # `exp` passed (beyond the allowed clock skew)
        "token_not_yet_valid",  # `nbf` or `iat` in the future (beyond the allowed clock skew)
        "token_lifetime_too_long",  # `exp - iat` above the connector's maximum token lifetime
        "wrong_audience",  # `aud` does not name this connector
        "missing_claim",  # a required claim (exp, iat, iss, aud, sub) is absent
        "no_known_role",  # the token carries none of our roles
        "jwks_unavailable",  # the issuer's keys could not be fetched
    }
)


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
