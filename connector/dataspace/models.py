"""Tables of the Dataspace Protocol: contract negotiations, agreements, transfer processes and
the identity tokens of peers already seen (so none is accepted twice).

A negotiation or transfer row is this connector's side of one DSP process, as provider or as
consumer; `pid` is our process id, `peer_pid` the other side's. A row never holds a data
permit's text beyond what the negotiation needs to decide again, and never a private key.
"""

from __future__ import annotations

from sqlalchemy import Float, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base


class Negotiation(Base):
    __tablename__ = "dsp_negotiations"
    __table_args__ = (Index("ix_dsp_negotiations_state_deadline", "state", "deadline"),)

    pid: Mapped[str] = mapped_column(String(64), primary_key=True)  # urn:uuid:..., ours
    role: Mapped[str] = mapped_column(String(8))  # provider | consumer
    peer_pid: Mapped[str] = mapped_column(String(256), default="")
    peer: Mapped[str] = mapped_column(String(256))  # the other connector's identifier
    peer_address: Mapped[str] = mapped_column(String(1024))  # its DSP base URL (callback or endpoint)
    state: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(64), default="")
    target: Mapped[str] = mapped_column(String(1024))  # the dataset's IRI
    offer: Mapped[str] = mapped_column(Text)  # JSON of the latest offer
    purpose: Mapped[str] = mapped_column(String(64), default="")
    actor: Mapped[str] = mapped_column(String(200), default="")  # the person the consumer acts for
    permit: Mapped[str] = mapped_column(Text, default="")  # the data permit presented (a signed JWT)
    agreement_id: Mapped[str] = mapped_column(String(64), default="")
    reasons: Mapped[str] = mapped_column(Text, default="[]")
    policy_version: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    deadline: Mapped[float] = mapped_column(Float)  # epoch seconds; past it, a live process terminates


class Agreement(Base):
    __tablename__ = "dsp_agreements"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    negotiation: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(8))
    provider: Mapped[str] = mapped_column(String(256))
    consumer: Mapped[str] = mapped_column(String(256))
    dataset: Mapped[str] = mapped_column(String(64), default="")
    target: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(200), default="")
    organisation: Mapped[str] = mapped_column(String(200), default="")
    country: Mapped[str] = mapped_column(String(2), default="")
    formats: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of transfer formats allowed
    document: Mapped[str] = mapped_column(Text)  # JSON of the ODRL agreement as sent
    signature: Mapped[str] = mapped_column(Text)  # the provider's JWS over the agreement
    valid_until: Mapped[float] = mapped_column(Float)  # epoch seconds (the permit's expiry)
    created_at: Mapped[str] = mapped_column(String(32))


class Transfer(Base):
    __tablename__ = "dsp_transfers"
    __table_args__ = (Index("ix_dsp_transfers_state_deadline", "state", "deadline"),)

    pid: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(8))
    peer_pid: Mapped[str] = mapped_column(String(256), default="")
    peer: Mapped[str] = mapped_column(String(256))
    peer_address: Mapped[str] = mapped_column(String(1024))
    agreement_id: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    data_address: Mapped[str] = mapped_column(Text, default="")  # consumer: JSON the provider sent
    reasons: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    deadline: Mapped[float] = mapped_column(Float)


class SeenToken(Base):
    """Identity tokens of peers already accepted, until they expire: a replay is refused."""

    __tablename__ = "dsp_seen_tokens"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
