"""This connector as a witness for its peers: it keeps the signed audit heads trusted peers send it.

A head is accepted only when the sending participant is on the trust list and the head's signature
verifies with that participant's Ed25519 key, so the route needs no bearer token: the signature is the
authentication. Heads are appended, one file per peer, and never rewritten; a second head for the same
seq with another hash (a peer whose chain was rewritten) is refused with `head_forked` and logged.
It never signs anything and never stores a head it could not verify.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from connector.audit.chain import checkpoint_message
from connector.audit.heads import HeadsFile, SignedHead
from connector.compute.package_signing import jwk_thumbprint
from connector.dataspace.trust import TrustList

log = logging.getLogger("connector.audit")


class WitnessRefused(Exception):
    """Why a head was not kept: `status` and `code` for the API answer, `detail` for people."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


def _signature_valid(jwk_x: str, message: bytes, signature: str) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk_x + "=" * (-len(jwk_x) % 4)))
        key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def peer_heads_file(witness_dir: Path, connector_id: str) -> HeadsFile:
    # The id is the peer's to choose: hashed into the file name, never used as a path.
    name = hashlib.sha256(connector_id.encode()).hexdigest()[:32]
    return HeadsFile(witness_dir / f"{name}.jsonl", connector_id)


def witness_head(trust: TrustList, witness_dir: Path, connector_id: str, head: SignedHead) -> bool:
    """Keep a peer's signed head; True when it was new, False for a repeat. Raises WitnessRefused."""
    participant = trust.get(connector_id)
    if participant is None:
        raise WitnessRefused(403, "untrusted_peer", f"{connector_id!r} is not on the trust list")
    if head.key_id != jwk_thumbprint(participant.signing_key):
        raise WitnessRefused(403, "unknown_key", "the head is not signed with the peer's trust-list key")
    message = checkpoint_message(connector_id, head.seq, head.entry_hash, head.signed_at)
    if not _signature_valid(participant.signing_key["x"], message, head.signature):
        raise WitnessRefused(403, "invalid_signature", "the head's signature does not verify")
    store = peer_heads_file(witness_dir, connector_id)
    for kept in store.read().heads:
        if kept.seq == head.seq and kept.entry_hash != head.entry_hash:
            log.error(
                "a peer signed two different audit heads", extra={"peer": connector_id, "seq": head.seq}
            )
            raise WitnessRefused(
                409,
                "head_forked",
                f"a different head for entry {head.seq} of {connector_id!r} was witnessed before",
            )
        if kept == head:
            return False  # a retry: nothing new to keep
    store.append(head)
    return True
