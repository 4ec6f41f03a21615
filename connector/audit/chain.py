"""Hashing and checkpoint messages of the audit chain (pure functions, no database).

Each entry's hash covers every field and the previous entry's hash, so editing, deleting,
inserting or reordering any entry breaks the chain from that point on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

GENESIS_HASH = "0" * 64


def canonical_json(value: Any) -> str:
    """The one JSON spelling we hash and store: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class AuditRecord:
    """One entry of the trail as stored and hashed."""

    seq: int
    ts: str
    actor: str
    actor_roles: str
    action: str
    object: str
    outcome: str
    reasons: str  # canonical JSON list of strings
    details: str  # canonical JSON object
    request_id: str | None
    prev_hash: str
    entry_hash: str

    def hash_input(self) -> bytes:
        fields = asdict(self)
        fields.pop("entry_hash")
        return canonical_json(fields).encode("utf-8")

    def computed_hash(self) -> str:
        return hashlib.sha256(self.hash_input()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        """The entry for export and the API, reasons and details decoded."""
        data = asdict(self)
        data["reasons"] = json.loads(self.reasons)
        data["details"] = json.loads(self.details)
        data["actor_roles"] = [role for role in self.actor_roles.split(",") if role]
        return data


def checkpoint_message(connector_id: str, seq: int, entry_hash: str, signed_at: str) -> bytes:
    """The bytes a checkpoint signs: who vouches for which chain position, and when."""
    return f"imaging-connector-audit-checkpoint/v1|{connector_id}|{seq}|{entry_hash}|{signed_at}".encode()
