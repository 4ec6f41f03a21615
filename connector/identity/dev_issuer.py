"""The embedded development issuer: mints EdDSA tokens for the demo, tests and local trials.

Its Ed25519 key is generated on first start and kept in the data folder. It must be turned off
(`dev_issuer_enabled = false`) wherever real people sign in; it never mints a role that does not exist.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt

from connector.crypto.signing import ConnectorSigningKey
from connector.identity.jwks import StaticJwks
from connector.identity.roles import Role
from connector.identity.verifier import TrustedIssuer


class DevIssuer:
    def __init__(self, key: ConnectorSigningKey, issuer: str, audience: str) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.key_id = key.key_id

    @classmethod
    def load_or_create(cls, key_dir: Path, issuer: str, audience: str) -> DevIssuer:
        return cls(ConnectorSigningKey.load_or_create(key_dir / "ed25519.pem"), issuer, audience)

    def issue(
        self,
        subject: str,
        roles: Iterable[Role | str],
        ttl_seconds: int = 3600,
        organisation: str | None = None,
        country: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        role_names = sorted({Role(role).value for role in _checked(roles)})
        now = int(time.time())
        claims: dict[str, Any] = {
            **(extra_claims or {}),
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": secrets.token_hex(16),
            "roles": role_names,
        }
        if organisation:
            claims["org"] = organisation
        if country:
            claims["country"] = country
        return jwt.encode(claims, self._key.jws_key, algorithm="EdDSA", headers={"kid": self.key_id})

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self._key.public_jwk, "kid": self.key_id, "alg": "EdDSA", "use": "sig"}]}

    def trusted_issuer(self) -> TrustedIssuer:
        return TrustedIssuer(issuer=self.issuer, jwks=StaticJwks(self.jwks()), algorithms=("EdDSA",))


def _checked(roles: Iterable[Role | str]) -> list[str]:
    names = [str(role) for role in roles]
    unknown = [name for name in names if name not in {role.value for role in Role}]
    if unknown or not names:
        raise ValueError(
            f"unknown role(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(role.value for role in Role)}"
        )
    return names
