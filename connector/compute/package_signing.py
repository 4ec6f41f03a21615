"""Signatures on model packages: a team signs the package digest (compact JWS), the connector verifies.

The JWS (RFC 7515) carries `alg` (EdDSA or ES256) and `kid` in its header and the claims `digest`
(sha256 hex of the exact zip bytes), `team`, `iat` and optionally `exp`. The connector checks it
against the team's public key registered in its database (`team_keys`), identified by the RFC
7638 thumbprint of the key. Rules (RFC 8725): the algorithm must be one of the two allowed and
fit the registered key; `none` and HMAC are refused before any key is looked up; the key comes
from the registry only, never from the token (`jwk`, `jku`, `x5u`, `x5c` are ignored).

This module never stores or returns a private key (only `generate_team_key` creates one, for the
team to keep), and never puts a token, a key or a signature into an error message.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.log import utc_now_text
from connector.compute.models import TeamKey
from connector.compute.package import (
    DEFAULT_LIMITS,
    ModelPackage,
    PackageError,
    PackageLimits,
    package_digest,
    read_package,
    shown,
)
from connector.db.engine import transaction

ALLOWED_ALGORITHMS = ("EdDSA", "ES256")
JWS_TYPE = "model-package+jwt"  # explicit typing (RFC 8725 §3.11): not a login token
# A package JWS is a few hundred characters; the bound keeps a hostile one from costing anything.
MAX_TOKEN_LENGTH = 8192
MAX_LEEWAY_SECONDS = 300
_TEAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class SignatureError(Exception):
    """A package signature is refused; `code` is machine-readable, `detail` says why in a sentence.

    Codes: missing_signature, malformed_signature, algorithm_not_allowed, unknown_key, revoked_key,
    invalid_signature, signature_expired, signature_not_yet_valid, team_mismatch, digest_mismatch.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class KeyRegistryError(Exception):
    """A team key cannot be registered or changed; `code` is machine-readable.

    Codes: invalid_team, invalid_key, private_key, unsupported_key, key_of_other_team, key_revoked,
    unknown_key.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class SignedBy:
    """Who signed a package whose signature verified."""

    team: str
    key_id: str
    algorithm: str = ""
    issued_at: int = 0
    expires_at: int | None = None


@dataclass(frozen=True)
class TeamKeyInfo:
    """A registered team key, public parts and history only."""

    team: str
    key_id: str
    algorithm: str
    public_jwk: dict[str, str]
    registered_at: str
    registered_by: str
    revoked_at: str | None
    revoked_by: str | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public_key(self) -> PublicKey:
        return _public_key_from_jwk(self.public_jwk)

    def to_json(self) -> dict[str, object]:
        return {
            "team": self.team,
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "public_jwk": dict(self.public_jwk),
            "registered_at": self.registered_at,
            "registered_by": self.registered_by,
            "revoked_at": self.revoked_at,
            "revoked_by": self.revoked_by,
        }


# --- keys ----------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def algorithm_for(key: PublicKey | PrivateKey) -> str:
    """The JWS algorithm of a key: EdDSA for Ed25519, ES256 for P-256; ValueError for any other."""
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ES256"
    raise ValueError("only Ed25519 (EdDSA) and P-256 (ES256) keys are accepted")


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The public JWK of a key with exactly the members RFC 7638 hashes (so it is canonical)."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    algorithm_for(key)  # P-256 only
    numbers = key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: sha256 over the required members in lexicographic order, no whitespace, base64url."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def key_id_of(key: PublicKey | PrivateKey) -> str:
    """The key id a (public or private) key is registered under: its public JWK's thumbprint."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    return jwk_thumbprint(public_jwk(public))


def _public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    if _PRIVATE_JWK_MEMBERS & set(jwk):
        raise KeyRegistryError(
            "private_key", "that JWK holds private key material; register the public key only"
        )
    kty, crv = jwk.get("kty"), jwk.get("crv")
    try:
        if kty == "OKP" and crv == "Ed25519":
            return Ed25519PublicKey.from_public_bytes(_b64url_decode(jwk["x"]))
        if kty == "EC" and crv == "P-256":
            x, y = _b64url_decode(jwk["x"]), _b64url_decode(jwk["y"])
            if len(x) != 32 or len(y) != 32:
                raise ValueError("P-256 coordinates are 32 bytes")
            # Building the key checks that the point lies on the curve.
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
    except (KeyError, ValueError, TypeError):
        raise KeyRegistryError("invalid_key", f"that {kty} JWK is not a valid {crv} public key") from None
    raise KeyRegistryError(
        "unsupported_key",
        f"key type {shown(kty, 16)} / curve {shown(crv, 16)} is not accepted; "
        "use Ed25519 (OKP) or P-256 (EC)",
    )


def parse_public_key(key: str | bytes | Mapping[str, Any] | PublicKey) -> PublicKey:
    """A team's public key from a PEM (SubjectPublicKeyInfo), a JWK (object or JSON) or a key object."""
    if isinstance(key, Ed25519PublicKey | ec.EllipticCurvePublicKey):
        public: PublicKey = key
    elif isinstance(key, Mapping):
        public = _public_key_from_jwk(key)
    else:
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if "PRIVATE KEY" in text:
            raise KeyRegistryError("private_key", "that is a private key; register the public key only")
        if text.lstrip().startswith("{"):
            try:
                document = json.loads(text)
            except ValueError:
                raise KeyRegistryError(
                    "invalid_key", "the key is neither a PEM public key nor a JWK"
                ) from None
            if not isinstance(document, Mapping):
                raise KeyRegistryError("invalid_key", "a JWK must be a JSON object")
            public = _public_key_from_jwk(document)
        else:
            try:
                loaded = serialization.load_pem_public_key(text.encode("utf-8"))
            except (ValueError, TypeError):
                raise KeyRegistryError(
                    "invalid_key", "the key is neither a PEM public key nor a JWK"
                ) from None
            if not isinstance(loaded, Ed25519PublicKey | ec.EllipticCurvePublicKey):
                raise KeyRegistryError(
                    "unsupported_key", "only Ed25519 (EdDSA) and P-256 (ES256) public keys are accepted"
                )
            public = loaded
    try:
        algorithm_for(public)
    except ValueError as exc:
        raise KeyRegistryError("unsupported_key", str(exc)) from None
    return public


def _private_key(key: str | bytes | PrivateKey) -> PrivateKey:
    if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        return key
    data = key.encode("utf-8") if isinstance(key, str) else key
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError("the private key is not an unencrypted PEM private key") from None
    if not isinstance(loaded, Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("only Ed25519 (EdDSA) and P-256 (ES256) private keys can sign packages")
    return loaded


def generate_team_key(alg: str = "EdDSA") -> tuple[bytes, bytes]:
    """A new key pair for a team, as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM).

    The private PEM is unencrypted: the team must keep it in a file only they can read (or wrap it
    in their own KMS); the connector only ever receives the public half.
    """
    private: PrivateKey
    if alg == "EdDSA":
        private = Ed25519PrivateKey.generate()
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"algorithm {shown(alg, 16)} is not allowed; choose EdDSA or ES256")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


# --- the registry --------------------------------------------------------------------------------


def _info(row: TeamKey) -> TeamKeyInfo:
    return TeamKeyInfo(
        team=row.team,
        key_id=row.key_id,
        algorithm=row.algorithm,
        public_jwk=json.loads(row.public_jwk),
        registered_at=row.registered_at,
        registered_by=row.registered_by,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
    )


def check_team(team: str) -> str:
    if not isinstance(team, str) or not _TEAM.fullmatch(team):
        raise KeyRegistryError(
            "invalid_team",
            "a team id is 1-128 letters, digits, '.', '_', '@' or '-', starting with a letter or digit",
        )
    return team


class TeamKeyRegistry:
    """The public keys teams sign packages with, in the connector's database (table `team_keys`).

    A key belongs to one team for good; it can be revoked, never deleted or moved, and a revoked
    key cannot be registered again.
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def register(
        self, team: str, public_key: str | bytes | Mapping[str, Any] | PublicKey, registered_by: str
    ) -> str:
        """Register `team`'s public key (PEM or JWK); returns its key id. Registering it again is a no-op."""
        check_team(team)
        if not registered_by:
            raise ValueError("registered_by must name who registers the key")
        key = parse_public_key(public_key)
        jwk = public_jwk(key)
        key_id = jwk_thumbprint(jwk)
        existing = self.get(key_id)
        if existing is None:
            try:
                with transaction(self._sessions) as session:
                    session.add(
                        TeamKey(
                            team=team,
                            key_id=key_id,
                            public_jwk=json.dumps(jwk, sort_keys=True, separators=(",", ":")),
                            algorithm=algorithm_for(key),
                            registered_at=utc_now_text(),
                            registered_by=registered_by[:200],
                        )
                    )
                return key_id
            except IntegrityError:
                # Registered concurrently by someone else: judge it like any existing key below.
                existing = self.get(key_id)
                if existing is None:
                    raise
        if existing.team != team:
            raise KeyRegistryError("key_of_other_team", "this key is already registered to another team")
        if existing.revoked:
            raise KeyRegistryError(
                "key_revoked", f"this key was revoked at {existing.revoked_at}; register a new key"
            )
        return key_id

    def revoke(self, key_id: str, by: str) -> TeamKeyInfo:
        """Revoke a key: no package signed with it verifies any more. Revoking twice keeps the first."""
        if not by:
            raise ValueError("by must name who revokes the key")
        with transaction(self._sessions) as session:
            row = session.execute(select(TeamKey).where(TeamKey.key_id == key_id)).scalar_one_or_none()
            if row is None:
                raise KeyRegistryError("unknown_key", f"no team key has id {shown(key_id)}")
            if row.revoked_at is None:
                row.revoked_at = utc_now_text()
                row.revoked_by = by[:200]
            return _info(row)

    def get(self, key_id: str) -> TeamKeyInfo | None:
        with self._sessions() as session:
            row = session.execute(select(TeamKey).where(TeamKey.key_id == key_id)).scalar_one_or_none()
            return _info(row) if row is not None else None

    def list(self, team: str | None = None, include_revoked: bool = True) -> builtins.list[TeamKeyInfo]:
        """Registered keys in registration order, optionally of one team and without revoked ones."""
        query = select(TeamKey).order_by(TeamKey.id)
        if team is not None:
            query = query.where(TeamKey.team == team)
        if not include_revoked:
            query = query.where(TeamKey.revoked_at.is_(None))
        with self._sessions() as session:
            return [_info(row) for row in session.execute(query).scalars()]


# --- signing and verification -------------------------------------------------------------------


def sign_package(
    package_bytes: bytes,
    private_key: str | bytes | PrivateKey,
    team_id: str,
    key_id: str | None = None,
    *,
    expires_in: int | None = None,
    issued_at: int | None = None,
) -> str:
    """A compact JWS by which `team_id` vouches for exactly these package bytes.

    `key_id` defaults to the key's thumbprint (the id the registry gives it) and must equal it when
    given, so a team cannot sign under an id that the connector would never find.
    """
    check_team(team_id)
    key = _private_key(private_key)
    own_id = key_id_of(key)
    if key_id is not None and key_id != own_id:
        raise ValueError(f"key_id {shown(key_id)} is not this key's id ({own_id})")
    now = int(time.time()) if issued_at is None else issued_at
    claims: dict[str, Any] = {"digest": package_digest(package_bytes), "team": team_id, "iat": now}
    if expires_in is not None:
        if expires_in <= 0:
            raise ValueError("expires_in must be a positive number of seconds")
        claims["exp"] = now + expires_in
    return jwt.encode(claims, key, algorithm=algorithm_for(key), headers={"kid": own_id, "typ": JWS_TYPE})


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise SignatureError("malformed_signature", "the signature is not a compact JWS") from None
    if token.count(".") != 2:
        raise SignatureError("malformed_signature", "the signature is not a compact JWS (three parts)")
    return header


def verify_package_signature(
    package_bytes: bytes, token: str | None, registry: TeamKeyRegistry, leeway_seconds: int = 60
) -> SignedBy:
    """Who signed these exact package bytes; SignatureError (with its code) when the JWS proves nothing."""
    if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY_SECONDS} seconds")
    if token is None or (isinstance(token, str | bytes) and not token.strip()):
        raise SignatureError("missing_signature", "the package comes without a signature (a JWS by its team)")
    if isinstance(token, bytes):
        token = token.decode("ascii", "replace")
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise SignatureError(
            "malformed_signature", f"the signature is not a JWS of at most {MAX_TOKEN_LENGTH} characters"
        )
    token = token.strip()
    header = _header(token)
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        # Checked before any key is looked up: `none` would skip verification, and HS256 would use
        # a public key as an HMAC secret that anyone knows.
        shown_alg = shown(alg, 16) if isinstance(alg, str) else "missing"
        raise SignatureError(
            "algorithm_not_allowed",
            f"algorithm {shown_alg} is not allowed (only {', '.join(ALLOWED_ALGORITHMS)})",
        )
    if "crit" in header:
        # RFC 7515 §4.1.11: a critical extension we do not understand must make us reject.
        raise SignatureError("malformed_signature", "the signature uses critical header extensions")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SignatureError("malformed_signature", "the signature names no key id (kid)")
    registered = registry.get(kid)
    if registered is None:
        raise SignatureError("unknown_key", f"no team key with id {shown(kid)} is registered here")
    if registered.revoked:
        raise SignatureError(
            "revoked_key", f"key {kid} of team {registered.team!r} was revoked at {registered.revoked_at}"
        )
    if alg != registered.algorithm:
        raise SignatureError(
            "algorithm_not_allowed", f"key {kid} is registered for {registered.algorithm}, not {alg}"
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            registered.public_key(),
            algorithms=[registered.algorithm],  # exactly the registered key's algorithm
            leeway=leeway_seconds,
            options={"require": ["digest", "team", "iat"], "verify_aud": False},
        )
    except jwt.ExpiredSignatureError:
        raise SignatureError("signature_expired", "the signature has expired (its exp is past)") from None
    except jwt.ImmatureSignatureError:
        raise SignatureError("signature_not_yet_valid", "the signature's iat is in the future") from None
    except jwt.InvalidSignatureError:
        raise SignatureError(
            "invalid_signature", f"the signature does not verify with key {kid} of team {registered.team!r}"
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        raise SignatureError("malformed_signature", f"the signature lacks the claim {exc.claim!r}") from None
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
        raise SignatureError("malformed_signature", "the signature's claims are malformed") from None
    team, digest = claims["team"], claims["digest"]
    if not isinstance(team, str) or not isinstance(digest, str) or not _HEX_DIGEST.fullmatch(digest):
        raise SignatureError(
            "malformed_signature", "claims team and digest must be a string and a sha256 hex"
        )
    if team != registered.team:
        raise SignatureError(
            "team_mismatch",
            f"the signature claims team {shown(team)} but key {kid} belongs to {registered.team!r}",
        )
    actual = package_digest(package_bytes)
    if not hmac.compare_digest(digest, actual):
        raise SignatureError(
            "digest_mismatch",
            f"the package's sha256 is {actual} but the team signed {digest}: it was changed after signing",
        )
    exp = claims.get("exp")
    return SignedBy(
        team=team,
        key_id=kid,
        algorithm=registered.algorithm,
        issued_at=int(claims["iat"]),
        expires_at=int(exp) if exp is not None else None,
    )


def open_signed_package(
    package_bytes: bytes, token: str | None, registry: TeamKeyRegistry, limits: PackageLimits = DEFAULT_LIMITS
) -> tuple[ModelPackage, SignedBy]:
    """The package and who signed it. The signature is verified first, so only a registered team's
    exact bytes are ever parsed; SignatureError or PackageError otherwise."""
    if len(package_bytes) > limits.max_package_bytes:
        raise PackageError(
            [f"the package has {len(package_bytes)} bytes; at most {limits.max_package_bytes}"]
        )
    signed = verify_package_signature(package_bytes, token, registry)
    return read_package(package_bytes, limits), signed
