"""Data keys wrapped for another connector: ECIES on X25519, for the encrypted dataset copy.

What it does
------------
Each connector has one X25519 key-agreement key (`exchange_key`), kept as a named secret in its
sealed key store, so it is the same across restarts and is shredded/rotated with the store. Its
public half travels as a JWK (`public_jwk`, `public_key_from_jwk`). A provider wraps a study's
data key for a peer with `wrap_for` and the peer unwraps it with `unwrap_with`:

    ephemeral X25519 key pair (fresh per wrap)
    shared  = X25519(ephemeral private, recipient public)
    kek     = HKDF-SHA256(shared, salt = ephemeral public | recipient public,
                          info = label | len(context) | context), 32 bytes
    ct      = AES-256-GCM(kek, iv = 12 random bytes, data key, associated data = label | context)

The wrapped key is JSON: ``{"alg", "rcpt", "epk", "iv", "ct"}`` (``rcpt`` the recipient's public
key, ``epk`` the ephemeral public key, both raw 32 bytes; all byte fields base64url without
padding). Both public keys and the context are bound into the derived key, and the context is
also the associated data, so a wrapped key opens only with the recipient's private key and only
for the exact context it was wrapped for (the encrypted copy uses transfer id, dataset and study
UID): copying it into another transfer, dataset or study fails. ``rcpt`` is informative only
(the unwrapper always uses its own public key in the derivation); it lets a wrong key be told
apart from a wrong context or tampering.

What it must never do
---------------------
* Never log key material or put it (private key, shared secret, derived key, data key) into an
  exception message or a repr; messages name fields and reasons only.
* Never accept a JWK holding a private part as a public key, nor guess at malformed input.
* Never release an unwrapped key that did not authenticate.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from connector.crypto.keystore import SealedFileKeyStore

ALGORITHM = "ECDH-ES-X25519+HKDF-SHA256+A256GCM"
EXCHANGE_KEY_NAME = "x25519-exchange"
PUBLIC_KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
MAX_WRAPPED_BYTES = 1024  # a data key is 32 bytes; anything much larger is not a wrapped key

_LABEL = b"imaging-connector peer key wrap v1\x00"
_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_FIELDS = ("alg", "rcpt", "epk", "iv", "ct")


class PeerWrapError(Exception):
    """A wrapped key cannot be opened: wrong private key, other context, tampered or malformed."""


def exchange_key(keys: SealedFileKeyStore) -> X25519PrivateKey:
    """This connector's X25519 key-agreement key, kept sealed in its key store (stable across restarts)."""
    return X25519PrivateKey.from_private_bytes(keys.signing_seed(EXCHANGE_KEY_NAME))


def public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_jwk(key: X25519PublicKey) -> dict[str, str]:
    """The public key as a JWK (RFC 8037): {"kty": "OKP", "crv": "X25519", "x": base64url}."""
    return {"kty": "OKP", "crv": "X25519", "x": _b64e(public_bytes(key))}


def public_key_from_jwk(jwk: object) -> X25519PublicKey:
    """The X25519 public key of a JWK; ValueError saying what is wrong with anything else."""
    if not isinstance(jwk, Mapping):
        raise ValueError("an X25519 public key must be a JWK object")
    if "d" in jwk:
        raise ValueError("the JWK holds a private key ('d'): pass the public key only")
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "X25519":
        raise ValueError(
            f"the JWK is not an X25519 key (kty {_short(jwk.get('kty'))}, crv {_short(jwk.get('crv'))}; "
            "expected kty 'OKP', crv 'X25519')"
        )
    try:
        raw = _b64d(jwk.get("x"), "x", PUBLIC_KEY_SIZE)
    except ValueError as exc:
        raise ValueError(f"the JWK's public key is malformed: {exc}") from None
    return X25519PublicKey.from_public_bytes(raw)


def wrap_for(recipient: X25519PublicKey, data_key: bytes, context: bytes) -> dict[str, str]:
    """`data_key` wrapped so that only `recipient`'s private key opens it, and only for `context`."""
    if not isinstance(recipient, X25519PublicKey):
        raise TypeError("recipient must be an X25519PublicKey")
    if not isinstance(data_key, bytes | bytearray) or not 1 <= len(data_key) <= MAX_WRAPPED_BYTES - TAG_SIZE:
        raise ValueError(f"the key to wrap must be 1 to {MAX_WRAPPED_BYTES - TAG_SIZE} bytes")
    _check_context(context)
    ephemeral = X25519PrivateKey.generate()
    epk = public_bytes(ephemeral.public_key())
    rcpt = public_bytes(recipient)
    kek = _derive(ephemeral.exchange(recipient), epk, rcpt, context)
    iv = secrets.token_bytes(IV_SIZE)
    ct = AESGCM(kek).encrypt(iv, bytes(data_key), _LABEL + context)
    return {"alg": ALGORITHM, "rcpt": _b64e(rcpt), "epk": _b64e(epk), "iv": _b64e(iv), "ct": _b64e(ct)}


def unwrap_with(private: X25519PrivateKey, wrapped: Mapping[str, object], context: bytes) -> bytes:
    """The key `wrap_for` wrapped, or PeerWrapError saying why it cannot be opened."""
    if not isinstance(private, X25519PrivateKey):
        raise TypeError("private must be an X25519PrivateKey")
    _check_context(context)
    if not isinstance(wrapped, Mapping):
        raise PeerWrapError("malformed wrapped key: not a JSON object")
    missing = [name for name in _FIELDS if name not in wrapped]
    if missing:
        raise PeerWrapError(f"malformed wrapped key: missing {', '.join(missing)}")
    extra = sorted(str(name) for name in wrapped if name not in _FIELDS)
    if extra:
        raise PeerWrapError(f"malformed wrapped key: unexpected fields {', '.join(_short(n) for n in extra)}")
    if wrapped["alg"] != ALGORITHM:
        raise PeerWrapError(f"wrapped key uses algorithm {_short(wrapped['alg'])}, not {ALGORITHM}")
    try:
        rcpt = _b64d(wrapped["rcpt"], "rcpt", PUBLIC_KEY_SIZE)
        epk = _b64d(wrapped["epk"], "epk", PUBLIC_KEY_SIZE)
        iv = _b64d(wrapped["iv"], "iv", IV_SIZE)
        ct = _b64d(wrapped["ct"], "ct")
    except ValueError as exc:
        raise PeerWrapError(f"malformed wrapped key: {exc}") from None
    if not TAG_SIZE < len(ct) <= MAX_WRAPPED_BYTES:
        raise PeerWrapError(f"malformed wrapped key: ct must be {TAG_SIZE + 1} to {MAX_WRAPPED_BYTES} bytes")
    own = public_bytes(private.public_key())
    if not hmac.compare_digest(rcpt, own):
        raise PeerWrapError(
            f"the key was wrapped for another recipient key (x {wrapped['rcpt']!s:.12}…), "
            f"not this connector's (x {_b64e(own):.12}…)"
        )
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:
        # A low-order point gives an all-zero shared secret, which cryptography refuses.
        raise PeerWrapError("malformed wrapped key: epk is not a usable X25519 public key") from None
    kek = _derive(shared, epk, own, context)
    try:
        return AESGCM(kek).decrypt(iv, ct, _LABEL + context)
    except InvalidTag:
        raise PeerWrapError(
            "the wrapped key does not authenticate: it was wrapped for another context "
            "(transfer, dataset or study) or was tampered with"
        ) from None


def _derive(shared: bytes, epk: bytes, rcpt: bytes, context: bytes) -> bytes:
    info = _LABEL + len(context).to_bytes(4, "big") + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + rcpt, info=info).derive(shared)


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes) or not context:
        raise TypeError("context must be non-empty bytes")


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(value: object, name: str, size: int | None = None) -> bytes:
    """Strict base64url (no padding) of at most MAX_WRAPPED_BYTES; ValueError naming the field."""
    if not isinstance(value, str) or not value or not _B64URL.match(value) or len(value) % 4 == 1:
        raise ValueError(f"{name} is not base64url")
    if len(value) > 2 * MAX_WRAPPED_BYTES:
        raise ValueError(f"{name} is too long")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error:
        raise ValueError(f"{name} is not base64url") from None
    if size is not None and len(raw) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(raw)}")
    return raw


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
