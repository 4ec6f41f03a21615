"""Bearer-token verification: which issuer, which key, which claims, which roles.

Rules: the unverified header and `iss` are read only to choose the issuer; the algorithm must be
one that issuer is allowed (never `none`, never HMAC, so a public key can never verify a forged
HMAC token); `exp`, `iat`, `iss`, `aud` and `sub` are required, `nbf` checked when present, clock
skew bounded to 0..300 s. Errors never contain the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from connector.identity.errors import AuthError, ForbiddenError
from connector.identity.jwks import JwksSource
from connector.identity.principal import Principal
from connector.identity.roles import Role

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MAX_LEEWAY_SECONDS = 300
_KNOWN_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    jwks: JwksSource
    roles_claim: str = "roles"  # dotted path, e.g. "realm_access.roles" for Keycloak
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

    def __post_init__(self) -> None:
        unsupported = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unsupported:
            raise ValueError(f"issuer {self.issuer!r}: unsupported algorithms {sorted(unsupported)}")


def _claim_at(claims: Mapping[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def roles_from(claims: Mapping[str, Any], path: str) -> frozenset[Role]:
    """Known roles from a list or space-separated string at `path`; unknown names are ignored."""
    raw = _claim_at(claims, path)
    names = raw.split() if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return frozenset(_KNOWN_ROLES[name] for name in names if isinstance(name, str) and name in _KNOWN_ROLES)


_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "the token has expired"),
    (
        jwt.ImmatureSignatureError,
        "token_not_yet_valid",
        "the token is not valid yet (nbf or iat in the future)",
    ),
    (jwt.InvalidAudienceError, "wrong_audience", "the token was issued for another audience"),
    (jwt.InvalidIssuerError, "unknown_issuer", "the token's issuer does not match"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "unsupported_algorithm", "the token's algorithm is not accepted"),
)


class TokenVerifier:
    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        audience: str,
        leeway_seconds: int = 60,
        max_lifetime_seconds: int | None = 86400,
    ) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds")
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_lifetime_seconds = max_lifetime_seconds

    @staticmethod
    def bearer_from_header(value: str | None) -> str:
        if not value:
            raise AuthError("missing_token", "this route needs an Authorization: Bearer token")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("malformed_token", "the Authorization header must be 'Bearer <token>'")
        return token.strip()

    def verify(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("missing_token", "this route needs an Authorization: Bearer token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("malformed_token", "the token is not a well-formed JWT") from None
        issuer_id = unverified.get("iss")
        if not isinstance(issuer_id, str):
            raise AuthError("missing_claim", "the token has no issuer (iss)")
        issuer = self._issuers.get(issuer_id)
        if issuer is None:
            raise AuthError("unknown_issuer", f"tokens from issuer {issuer_id[:200]!r} are not trusted here")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise AuthError(
                "unsupported_algorithm", f"algorithm {str(alg)[:20]!r} is not accepted for this issuer"
            )
        kid = header.get("kid")
        key = issuer.jwks.get_signing_key(kid if isinstance(kid, str) else None, alg)
        claims = self._decode(token, key, alg, issuer_id)
        self._check_lifetime(claims)
        roles = roles_from(claims, issuer.roles_claim)
        if not roles:
            raise AuthError("no_known_role", f"the token carries none of the roles {', '.join(_KNOWN_ROLES)}")
        return Principal(
            subject=claims["sub"],
            roles=roles,
            issuer=issuer_id,
            organisation=_optional_text(claims.get("org")),
            country=_optional_text(claims.get("country")),
            token_id=_optional_text(claims.get("jti")),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            claims=claims,
        )

    def _decode(self, token: str, key: Any, alg: str, issuer_id: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=issuer_id,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            for error_type, code, detail in _ERRORS:
                if isinstance(exc, error_type):
                    if isinstance(exc, jwt.MissingRequiredClaimError):
                        detail = f"the token lacks the required claim {exc.claim!r}"
                    raise AuthError(code, detail) from None
            raise AuthError("malformed_token", "the token's claims are malformed") from None
        return claims

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        if (
            self.max_lifetime_seconds is not None
            and claims["exp"] - claims["iat"] > self.max_lifetime_seconds
        ):
            raise AuthError(
                "token_lifetime_too_long", f"tokens may live at most {self.max_lifetime_seconds} seconds"
            )


def _optional_text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def require_roles(principal: Principal, allowed: Iterable[Role]) -> None:
    allowed_set = frozenset(allowed)
    if not principal.roles & allowed_set:
        held = ", ".join(sorted(principal.roles))
        raise ForbiddenError(f"role {held!r} may not call this; allowed: {', '.join(sorted(allowed_set))}")
