"""Who is calling, as established from a verified token.

A Principal is built only by the verifier, after the signature and claims have been checked. It
never holds the token itself, so logging or serialising a Principal cannot leak a credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from connector.identity.roles import Role


@dataclass(frozen=True)
class Principal:
    subject: str  # the token's `sub`
    roles: frozenset[Role]  # known roles only; never empty for a verified caller
    issuer: str  # the token's `iss`, one of the trusted issuers
    organisation: str | None  # claim "org"
    country: str | None  # claim "country", ISO 3166-1 alpha-2, upper case
    token_id: str | None  # claim "jti", for the audit trail
    expires_at: datetime  # claim "exp", timezone-aware UTC
    claims: Mapping[str, Any]  # every verified claim, read-only
