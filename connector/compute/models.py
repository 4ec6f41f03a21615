"""Tables of the compute domain: the public keys outside AI teams sign their model packages with.

Only public keys are stored (as a JWK); a private key is refused before it reaches this table. A
key is never deleted, only revoked, so every past verification can still be explained.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base


class TeamKey(Base):
    """One registered signing key of a team; `key_id` is the RFC 7638 thumbprint of `public_jwk`."""

    __tablename__ = "team_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(String(128), index=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    public_jwk: Mapped[str] = mapped_column(Text)  # canonical JSON of the public JWK
    algorithm: Mapped[str] = mapped_column(String(16))  # EdDSA | ES256
    registered_at: Mapped[str] = mapped_column(String(32))
    registered_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    revoked_by: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
