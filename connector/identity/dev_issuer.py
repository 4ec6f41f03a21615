"""The embedded development issuer: mints EdDSA tokens for the demo, tests and local trials.

Its Ed25519 key pair is generated on first start in its own folder (mode 0700; the private key file
mode 0600, written to a temporary file and linked into place, so a crash never leaves half a key)
and reused afterwards. A key file that exists but cannot be read is an error for a person: it is
never silently replaced, because that would invalidate every token issued with it.

It must be turned off (`dev_issuer_enabled = false`) wherever real people sign in. It never mints
a role that does not exist, never writes its private key anywhere but its key file, and never logs
a token it issued.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt

from connector.crypto.keyfile import KeyFileError
from connector.crypto.signing import ConnectorSigningKey
from connector.identity.jwks import StaticJwks
from connector.identity.roles import Role, parse_roles
from connector.identity.verifier import TrustedIssuer

log = logging.getLogger(__name__)

DEFAULT_ISSUER = "urn:connector:dev-issuer"
DEFAULT_AUDIENCE = "imaging-connector"
KEY_FILE_NAME = "ed25519.pem"
# A development token that outlives a working week is a credential someone will forget about.
MAX_TTL_SECONDS = 7 * 86400
# Claims the issuer sets itself; extra_claims may not override them (a silently ignored or an
# overridden `roles` or `aud` would both be surprising).
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "iat", "nbf", "exp", "jti", "roles", "org", "country"})
_COUNTRY = re.compile(r"[A-Za-z]{2}")


def _load_or_create_key(key_dir: Path) -> ConnectorSigningKey:
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The folder is the issuer's own: tighten it even if it existed (mkdir's mode obeys the umask
    # and does not apply to an existing folder).
    key_dir.chmod(0o700)
    path = key_dir / KEY_FILE_NAME
    existed = path.exists()
    try:
        key = ConnectorSigningKey.load_or_create(path)
    except KeyFileError as exc:
        if existed or not path.exists():
            raise KeyFileError(
                f"{exc}. It is the development issuer's key: if it cannot be restored, move it away and "
                "restart to generate a new one (tokens issued with the old key then stop verifying)"
            ) from None
        # Another process (a second server worker) created the key between our check and our
        # write; the link-based write refused to replace it, so use the one that won.
        key = ConnectorSigningKey.load_or_create(path)
    except OSError as exc:
        raise KeyFileError(f"key file {path} cannot be read or created: {exc.strerror}") from None
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("key file %s is accessible to other users (mode %o); run chmod 600 on it", path, mode)
    return key


class DevIssuer:
    """Mints tokens the connector trusts when `dev_issuer_enabled` is on. Demo and tests only."""

    def __init__(self, key_dir: Path, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE) -> None:
        if not issuer or not audience:
            raise ValueError("the development issuer needs a non-empty issuer and audience")
        self.key_dir = Path(key_dir)
        self.key_path = self.key_dir / KEY_FILE_NAME
        self.issuer = issuer
        self.audience = audience
        self._key = _load_or_create_key(self.key_dir)
        self.key_id: str = self._key.key_id  # RFC 7638 JWK thumbprint of the public key

    @classmethod
    def load_or_create(
        cls, key_dir: Path, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE
    ) -> DevIssuer:
        """The issuer whose key lives in `key_dir`, generating the key pair on first start."""
        return cls(key_dir, issuer, audience)

    def issue(
        self,
        subject: str,
        roles: Iterable[Role | str],
        ttl_seconds: int = 3600,
        organisation: str | None = None,
        country: str | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token for `subject` with `roles`; ValueError for an unknown role or bad argument."""
        if not subject or not subject.strip():
            raise ValueError("the subject (sub) must not be empty")
        role_names = sorted(role.value for role in parse_roles(roles))
        if (
            isinstance(ttl_seconds, bool)
            or not isinstance(ttl_seconds, int)
            or not 0 < ttl_seconds <= MAX_TTL_SECONDS
        ):
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
        if country is not None and not _COUNTRY.fullmatch(country):
            raise ValueError(f"country must be an ISO 3166-1 alpha-2 code such as 'BE', got {country!r}")
        if organisation is not None and not organisation.strip():
            raise ValueError("organisation must not be empty when given")
        clashing = sorted(RESERVED_CLAIMS & set(extra_claims or {}))
        if clashing:
            raise ValueError(f"extra_claims may not set {', '.join(clashing)}: the issuer sets them itself")
        claims: dict[str, Any] = {**(extra_claims or {}), "roles": role_names}
        if organisation is not None:
            claims["org"] = organisation
        if country is not None:
            claims["country"] = country.upper()
        return self.sign(subject, ttl_seconds, claims)

    def sign(self, subject: str, ttl_seconds: int, claims: Mapping[str, Any]) -> str:
        """A signed JWT for `subject` carrying `claims`, with iss, aud, iat, nbf, exp and a random jti.

        Callers validate their own claims; this only stamps the registered ones (a `jti` in
        `claims` is kept: a data permit's id is its jti).
        """
        now = int(time.time())
        stamped: dict[str, Any] = {
            "jti": uuid.uuid4().hex,  # random, so the audit trail can tell two tokens apart
            **claims,
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
        }
        return jwt.encode(stamped, self._key.jws_key, algorithm="EdDSA", headers={"kid": self.key_id})

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (RFC 7517) that verifies this issuer's tokens; a fresh copy each call."""
        public = copy.deepcopy(self._key.public_jwk)
        return {"keys": [{**public, "kid": self.key_id, "alg": "EdDSA", "use": "sig"}]}

    def trusted_issuer(self) -> TrustedIssuer:
        """This issuer as the verifier trusts it: its own public key, EdDSA only."""
        return TrustedIssuer(
            issuer=self.issuer,
            jwks=StaticJwks(self.jwks(), source="the development issuer's JWKS"),
            algorithms=("EdDSA",),
        )
