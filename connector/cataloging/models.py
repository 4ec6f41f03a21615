"""Tables of the catalog: each dataset's record (steward fields, version, rendered record, search
facets) and every push to a remote catalog with the remote's answer.

Records hold published values only: suppressed counts, banded ages, codes. No table here holds a
pseudonym or a count below k. Entries outlive their dataset: a shredded dataset stays listed as
withdrawn, so harvesters learn that it is gone.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base


class CatalogEntry(Base):
    """A dataset's catalog state: small columns only, so paging and search walk indexes (the
    rendered record lives in CatalogDocument and is read only for the rows of a page)."""

    __tablename__ = "catalog_entries"
    __table_args__ = (
        Index("ix_catalog_entries_status_dataset", "status", "dataset"),
        Index("ix_catalog_entries_modified", "modified"),
    )

    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    steward_fields: Mapped[str] = mapped_column(Text)  # JSON, as catalog.steward_file writes it
    status: Mapped[str] = mapped_column(String(16))  # draft | published | withdrawn
    version: Mapped[int] = mapped_column(Integer, default=0)  # 0 until first published
    digest: Mapped[str] = mapped_column(String(64), default="")  # of the content, not of version/dates
    issued: Mapped[str] = mapped_column(String(32), default="")
    modified: Mapped[str] = mapped_column(String(32), default="")
    min_age: Mapped[int | None] = mapped_column(Integer, nullable=True)  # banded
    max_age: Mapped[int | None] = mapped_column(Integer, nullable=True)  # banded
    updated_by: Mapped[str] = mapped_column(String(200), default="")


class CatalogDocument(Base):
    """The rendered record of a public entry (JSON of catalog.render.RenderedRecord)."""

    __tablename__ = "catalog_documents"

    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    rendered: Mapped[str] = mapped_column(Text)


class CatalogFacet(Base):
    """One searchable value of a published record: modality, body part, disease, purpose, country."""

    __tablename__ = "catalog_facets"
    __table_args__ = (Index("ix_catalog_facets_lookup", "facet", "value", "dataset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    facet: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(200))


class CatalogPublication(Base):
    """One push (publish or withdraw) of one record version to one remote catalog."""

    __tablename__ = "catalog_publications"
    __table_args__ = (Index("ix_catalog_publications_dataset_target", "dataset", "target", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(16))  # publish | withdraw
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    answer: Mapped[str] = mapped_column(Text, default="")  # the remote's answer, truncated
    error: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(200))
