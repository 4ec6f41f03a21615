"""Ed25519 signing keys kept in key files: the connector's own key (audit checkpoints, later agreements
and results) and the development token issuer's key.

It never writes the private key anywhere but its key file; callers get signatures, JWS signing
handles and the public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from connector.crypto.keyfile import load_or_create_ed25519


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ConnectorSigningKey:
    """Signs with the connector's Ed25519 key; `key_id` is the RFC 7638 thumbprint of its public JWK."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: Ed25519PublicKey = private_key.public_key()
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
        # RFC 7638: the thumbprint hashes the required members in lexicographic order, no spaces.
        canonical = json.dumps(dict(sorted(self.public_jwk.items())), separators=(",", ":"))
        self.key_id = _b64url(hashlib.sha256(canonical.encode()).digest())

    @classmethod
    def load_or_create(cls, path: Path) -> ConnectorSigningKey:
        return cls(load_or_create_ed25519(path))

    @property
    def jws_key(self) -> Ed25519PrivateKey:
        """The private key as pyjwt needs it to sign an EdDSA JWS (never serialise it)."""
        return self._private

    def sign(self, message: bytes) -> str:
        return _b64url(self._private.sign(message))

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            padded = signature + "=" * (-len(signature) % 4)
            self.public_key.verify(base64.urlsafe_b64decode(padded), message)
        except (InvalidSignature, ValueError):
            return False
        return True
