"""Bearer-token verification: which issuer, which key, which claims, which roles.

Rules (RFC 7519, RFC 8725 "JWT Best Current Practices"):
- the unverified header and `iss` are read only to choose the issuer and its key; nothing else
  from an unverified token is trusted or returned;
- the algorithm must be one that issuer is allowed, and only RS256, ES256 and EdDSA exist here:
  never `none`, never HMAC, so a public key can never serve as the secret of a forged HMAC token;
  the key's own type must match the algorithm;
- keys come only from the issuer's configured JWKS, never from the token (`jwk`, `jku`, `x5u`);
- `exp`, `iat`, `iss`, `aud` and `sub` are required, `nbf` is checked when present, clock skew is
  bounded to 0..300 s, and a token may not live longer than the configured maximum;
- an unknown role name is not a role of ours and is ignored; a token left with none is refused.

It must never log or put into an error the token, a key, or claims beyond what names the problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import jwt

from connector.identity.errors import AuthError, ForbiddenError
from connector.identity.jwks import SUPPORTED_ALGORITHMS, JwksSource
from connector.identity.principal import Principal
from connector.identity.roles import Role

ASYMMETRIC_ALGORITHMS = SUPPORTED_ALGORITHMS
MAX_LEEWAY_SECONDS = 300
# Far above any real token (a few KiB) yet small enough that parsing a hostile one costs nothing.
MAX_TOKEN_LENGTH = 16_384
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
# Up to 9999-12-31: beyond it a timestamp cannot become a datetime, and no honest token goes there.
_LATEST_NUMERIC_DATE = 253_402_300_799
_COUNTRY = re.compile(r"[A-Za-z]{2}")
_KNOWN_ROLES = {role.value: role for role in Role}


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str  # the exact `iss` of its tokens
    jwks: JwksSource
    roles_claim: str = "roles"  # dotted path, e.g. "realm_access.roles" for Keycloak
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("a trusted issuer needs its exact `iss` value")
        if not self.algorithms:
            raise ValueError(f"issuer {self.issuer!r}: no algorithm allowed")
        unsupported = set(self.algorithms) - ASYMMETRIC_ALGORITHMS
        if unsupported:
            raise ValueError(
                f"issuer {self.issuer!r}: unsupported algorithms {sorted(unsupported)}; "
                f"choose from {sorted(ASYMMETRIC_ALGORITHMS)}"
            )
        if not self.roles_claim or "" in self.roles_claim.split("."):
            raise ValueError(f"issuer {self.issuer!r}: roles_claim must be a dotted path like a.b.c")


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


def _when(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return "an invalid time"


class TokenVerifier:
    """Verifies bearer JWTs from a fixed set of trusted issuers for one audience (this connector)."""

    def __init__(
        self,
        issuers: Sequence[TrustedIssuer],
        audience: str,
        leeway_seconds: int = 60,
        max_lifetime_seconds: int | None = 86400,
    ) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(
                f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds (clock skew is bounded), "
                f"got {leeway_seconds}"
            )
        if max_lifetime_seconds is not None and max_lifetime_seconds <= 0:
            raise ValueError("max_lifetime_seconds must be positive, or None for no limit")
        if not audience:
            raise ValueError("the audience must not be empty")
        self._issuers: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer!r} is configured twice")
            self._issuers[issuer.issuer] = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_lifetime_seconds = max_lifetime_seconds

    @property
    def issuers(self) -> tuple[str, ...]:
        """The `iss` values accepted, for diagnostics."""
        return tuple(self._issuers)

    @staticmethod
    def bearer_from_header(value: str | None) -> str:
        """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1)."""
        if value is None or not value.strip():
            raise AuthError("missing_token", "this route needs an Authorization: Bearer token")
        parts = value.split()
        if parts[0].lower() != "bearer":
            raise AuthError(
                "malformed_token", "the Authorization header must use the Bearer scheme: 'Bearer <token>'"
            )
        if len(parts) != 2:
            raise AuthError("malformed_token", "the Authorization header must be 'Bearer <token>'")
        return parts[1]

    def verify(self, token: str | None) -> Principal:
        """The caller a token proves; AuthError (with a code and a reason) when it proves nothing."""
        issuer, claims = self.verify_claims(token)
        roles = roles_from(claims, issuer.roles_claim)
        if not roles:
            raise AuthError(
                "no_known_role",
                f"the token carries none of the roles {', '.join(_KNOWN_ROLES)} "
                f"(read from claim {issuer.roles_claim!r})",
            )
        return Principal(
            subject=claims["sub"],
            roles=roles,
            issuer=issuer.issuer,
            organisation=_optional_text(claims, "org"),
            country=_country(claims),
            token_id=_optional_text(claims, "jti"),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            claims=MappingProxyType(claims),
        )

    def verify_claims(self, token: str | None) -> tuple[TrustedIssuer, dict[str, Any]]:
        """The issuer and verified claims of a JWT (signature, algorithm, times, audience, lifetime).

        For callers that read their own claims from a verified token (data permits); AuthError
        when it proves nothing.
        """
        if not token:
            raise AuthError("missing_token", "this route needs an Authorization: Bearer token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError(
                "malformed_token", f"the token is not a JWT of at most {MAX_TOKEN_LENGTH} characters"
            )
        header, unverified = self._peek(token)
        issuer = self._issuer_of(unverified)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            allowed = ", ".join(issuer.algorithms)
            shown = repr(alg[:16]) if isinstance(alg, str) else "missing"
            raise AuthError(
                "unsupported_algorithm",
                f"algorithm {shown} is not accepted for this issuer (allowed: {allowed})",
            )
        if "crit" in header:
            # RFC 7515 §4.1.11: a recipient that does not understand a critical extension must reject.
            raise AuthError(
                "malformed_token", "the token uses critical header extensions, which are not supported"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed_token", "the token's key id (kid) must be a string")
        key = issuer.jwks.get_signing_key(kid, alg)
        claims = self._decode(token, key, alg, issuer.issuer, unverified)
        self._check_claim_types(claims)
        self._check_lifetime(claims)
        return issuer, claims

    @staticmethod
    def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims, unverified: used only to pick the issuer and its key."""
        try:
            decoded = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthError("malformed_token", "the token is not a well-formed JWT") from None
        return decoded["header"], decoded["payload"]

    def _issuer_of(self, unverified: Mapping[str, Any]) -> TrustedIssuer:
        issuer_id = unverified.get("iss")
        if issuer_id is None:
            raise AuthError("missing_claim", "the token lacks the required claim 'iss'")
        if not isinstance(issuer_id, str):
            raise AuthError("malformed_token", "claim 'iss' must be a string")
        issuer = self._issuers.get(issuer_id)
        if issuer is None:
            # The iss is shown (bounded, escaped) because it is what an operator needs to fix trust.
            raise AuthError("unknown_issuer", f"tokens from issuer {issuer_id[:200]!r} are not trusted here")
        return issuer

    def _decode(
        self, token: str, key: Any, alg: str, issuer_id: str, unverified: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],  # exactly the one algorithm this key is for
                audience=self.audience,
                issuer=issuer_id,
                leeway=self.leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            # pyjwt checks times only after the signature verified, so `unverified` is authentic here.
            self._check_numeric_dates(unverified)
            raise AuthError("token_expired", f"the token expired at {_when(unverified.get('exp'))}") from None
        except jwt.ImmatureSignatureError:
            self._check_numeric_dates(unverified)
            nbf, iat = unverified.get("nbf"), unverified.get("iat")
            at = _when(nbf if nbf is not None else iat)
            raise AuthError(
                "token_not_yet_valid",
                f"the token is not valid before {at} (nbf/iat in the future beyond the allowed clock skew)",
            ) from None
        except jwt.InvalidAudienceError:
            raise AuthError(
                "wrong_audience", f"the token was not issued for audience {self.audience!r}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"the token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidIssuerError:
            raise AuthError("unknown_issuer", "the token's issuer does not match its key") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid_signature", "the token's signature does not verify") from None
        except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
            raise AuthError(
                "unsupported_algorithm", "the token's algorithm does not fit the issuer's key"
            ) from None
        except (jwt.PyJWTError, TypeError, ValueError, OverflowError):
            # pyjwt converts exp/nbf/iat with int(); claims of another type surface as these.
            raise AuthError("malformed_token", "the token's claims are malformed") from None
        return claims

    @staticmethod
    def _check_numeric_dates(claims: Mapping[str, Any]) -> None:
        for name in ("exp", "iat", "nbf"):
            if name not in claims:
                continue
            value = claims[name]
            # RFC 7519 §2: a NumericDate is a JSON number; pyjwt would also take "123" or true.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value <= _LATEST_NUMERIC_DATE
            ):
                raise AuthError(
                    "malformed_token", f"claim {name!r} must be a NumericDate (seconds since 1970)"
                )

    def _check_claim_types(self, claims: Mapping[str, Any]) -> None:
        self._check_numeric_dates(claims)
        if not claims["sub"].strip():
            raise AuthError("missing_claim", "the token's subject (sub) is empty")

    def _check_lifetime(self, claims: Mapping[str, Any]) -> None:
        if (
            self.max_lifetime_seconds is not None
            and claims["exp"] - claims["iat"] > self.max_lifetime_seconds
        ):
            raise AuthError(
                "token_lifetime_too_long",
                f"tokens may live at most {self.max_lifetime_seconds} seconds from iat to exp",
            )


def _optional_text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AuthError("malformed_token", f"claim {name!r} must be a non-empty string")
    return value


def _country(claims: Mapping[str, Any]) -> str | None:
    value = claims.get("country")
    if value is None:
        return None
    # A bad country is refused, not dropped: policies decide on it, and a silent None would turn a
    # mapper misconfiguration at the IdP into puzzling policy denials.
    if not isinstance(value, str) or not _COUNTRY.fullmatch(value):
        raise AuthError("malformed_token", "claim 'country' must be an ISO 3166-1 alpha-2 code such as 'BE'")
    return value.upper()


def require_roles(principal: Principal, allowed: Iterable[Role]) -> None:
    """Admit `principal` when it holds one of `allowed`; ForbiddenError naming the roles otherwise."""
    allowed_set = frozenset(Role(role) for role in allowed)
    if principal.roles & allowed_set:
        return
    held = sorted(principal.roles)
    holder = (
        "a caller without a role"
        if not held
        else f"role {held[0].value!r}"
        if len(held) == 1
        else "roles " + ", ".join(repr(role.value) for role in held)
    )
    allowed_text = ", ".join(sorted(allowed_set)) or "no role"
    raise ForbiddenError(f"{holder} may not call this; allowed: {allowed_text}")
