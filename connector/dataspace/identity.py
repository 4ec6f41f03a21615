"""Who a peer connector is: the trust list (the data space's trust anchor, kept as a file) and the
short-lived identity tokens connectors sign for each request they send one another.

A token is a JWT signed (EdDSA) by the sending connector's own key, naming it as `iss` and `sub`,
the receiving connector as `aud`, living at most `MAX_TOKEN_SECONDS`, with a `jti` that is
accepted once (a replay is refused). Keys and countries come only from the trust list, never from
the token. Nothing here logs or returns a token, and nothing trusts a peer the list does not name.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from connector.crypto.peer_wrap import exchange_key, public_jwk
from connector.dataspace.models import SeenToken
from connector.dataspace.trust import Participant, TrustList
from connector.identity.jwks import StaticJwks
from connector.runtime import Runtime

MAX_TOKEN_SECONDS = 300
TOKEN_SECONDS = 60
_MAX_TOKEN_LENGTH = 32_768  # a data permit may ride along


class PeerAuthError(Exception):
    """The caller is not a trusted peer, or its token proves nothing; `code` for the DSP error."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class PeerIdentity:
    participant: Participant
    claims: Mapping[str, Any]


def own_participant(runtime: Runtime) -> Participant:
    """This connector's own trust-list entry (what its operator hands the trust anchor)."""
    settings = runtime.settings
    return Participant(
        id=settings.connector_id,
        organisation=settings.organisation,
        country=settings.country,
        signing_key={**runtime.signing_key.public_jwk, "kid": runtime.signing_key.key_id},
        exchange_key=public_jwk(exchange_key(runtime.keys).public_key()),
        dsp=settings.public_url.rstrip("/") + "/dsp",
    )


def peer_token(runtime: Runtime, audience: str, extra: Mapping[str, Any] | None = None) -> str:
    """A fresh identity token for one request to the peer `audience`."""
    now = int(time.time())
    claims = {
        **(extra or {}),
        "iss": runtime.settings.connector_id,
        "sub": runtime.settings.connector_id,
        "aud": audience,
        "iat": now,
        "exp": now + TOKEN_SECONDS,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims, runtime.signing_key.jws_key, algorithm="EdDSA", headers={"kid": runtime.signing_key.key_id}
    )


def _remember(runtime: Runtime, jti: str, expires_at: float) -> None:
    """Record `jti` as used; PeerAuthError when it was used before (a replay)."""
    now = time.time()
    try:
        with runtime.sessions() as session, session.begin():
            session.add(SeenToken(jti=jti, expires_at=expires_at))
    except IntegrityError:
        raise PeerAuthError("replayed_token", "this identity token was already used (replay)") from None
    # Expired entries can never match again (their tokens are refused as expired): drop them now
    # and then, in a separate statement so a slow cleanup never blocks the request's own insert.
    if int(now) % 16 == 0:
        with runtime.sessions() as session, session.begin():
            session.execute(delete(SeenToken).where(SeenToken.expires_at < now - MAX_TOKEN_SECONDS))


def verify_peer(runtime: Runtime, trust: TrustList, authorization: str | None) -> PeerIdentity:
    """The trusted peer an `Authorization: Bearer` identity token proves, or PeerAuthError."""
    if not authorization or not authorization.lower().startswith("bearer "):
        raise PeerAuthError("missing_token", "a DSP request needs an Authorization: Bearer identity token")
    token = authorization.split(None, 1)[1].strip()
    if not token or len(token) > _MAX_TOKEN_LENGTH:
        raise PeerAuthError("malformed_token", "the identity token is not a JWT of acceptable size")
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise PeerAuthError("malformed_token", "the identity token is not a well-formed JWT") from None
    issuer = unverified.get("iss")
    participant = trust.get(issuer) if isinstance(issuer, str) else None
    if participant is None:
        raise PeerAuthError(
            "untrusted_peer", "the sender is not a participant on this connector's trust list"
        )
    if header.get("alg") != "EdDSA":
        raise PeerAuthError("unsupported_algorithm", "identity tokens must be signed with EdDSA")
    key = StaticJwks({"keys": [{**participant.signing_key, "alg": "EdDSA"}]}, source="the trust list")
    try:
        claims = jwt.decode(
            token,
            key.get_signing_key(None, "EdDSA"),
            algorithms=["EdDSA"],
            audience=runtime.settings.connector_id,
            issuer=participant.id,
            leeway=runtime.settings.token_leeway_seconds,
            options={"require": ["iss", "sub", "aud", "iat", "exp", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise PeerAuthError("expired_token", "the identity token has expired") from None
    except jwt.InvalidAudienceError:
        raise PeerAuthError("wrong_audience", "the identity token is meant for another connector") from None
    except jwt.InvalidSignatureError:
        raise PeerAuthError("invalid_signature", "the identity token's signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise PeerAuthError("invalid_token", f"the identity token is not acceptable: {exc}") from None
    if claims["sub"] != participant.id:
        raise PeerAuthError("invalid_token", "the identity token's sub must be its issuer")
    if not isinstance(claims["jti"], str) or not 8 <= len(claims["jti"]) <= 128:
        raise PeerAuthError(
            "invalid_token", "the identity token's jti must be a string of 8 to 128 characters"
        )
    if claims["exp"] - claims["iat"] > MAX_TOKEN_SECONDS:
        raise PeerAuthError("token_too_long", f"identity tokens may live at most {MAX_TOKEN_SECONDS} s")
    _remember(
        runtime,
        hashlib.sha256(f"{participant.id}#{claims['jti']}".encode()).hexdigest(),
        float(claims["exp"]),
    )
    return PeerIdentity(participant, claims)
