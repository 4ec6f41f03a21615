"""Who is calling, as established from a verified token. Never holds the token itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.identity.roles import Role


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[Role]
    issuer: str
    organisation: str | None
    country: str | None
    token_id: str | None
    expires_at: datetime
    claims: Mapping[str, Any]
