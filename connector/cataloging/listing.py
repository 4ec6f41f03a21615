"""This connector's public catalog: pages of published records, faceted search, single records,
the whole catalog as one document.

Pages are assembled from records rendered when they changed (catalog.render), so serving costs
two indexed queries and string joins. Only published and withdrawn records are listed (a
withdrawn one as deprecated, so harvesters learn it is gone); drafts never are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, func, or_, select

from catalog.model import CatalogInfo
from catalog.render import Format, PageInfo, RenderedRecord, render_catalog_page
from connector.cataloging.models import CatalogDocument, CatalogEntry, CatalogFacet
from connector.cataloging.service import PUBLIC_STATUSES, default_publisher
from connector.runtime import Runtime

FACETS = ("modality", "body_part", "disease", "purpose", "country")


@dataclass(frozen=True)
class SearchFilters:
    """Values within one facet are alternatives (OR); facets combine (AND)."""

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    disease: tuple[str, ...] = ()  # ICD-10 / SNOMED CT codes; "C34" also finds "C34.1"
    purpose: tuple[str, ...] = ()
    country: tuple[str, ...] = ()
    age: int | None = None  # the banded age range contains this age
    include_withdrawn: bool = True

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in FACETS) and self.age is None

    def query_items(self) -> list[tuple[str, str]]:
        items = [(name, value) for name in FACETS for value in getattr(self, name)]
        if self.age is not None:
            items.append(("age", str(self.age)))
        return items


def _filtered(query: Select[Any], filters: SearchFilters) -> Select[Any]:
    statuses = PUBLIC_STATUSES if filters.include_withdrawn and filters.is_empty() else ("published",)
    query = query.where(CatalogEntry.status.in_(statuses))
    for name in FACETS:
        values = getattr(filters, name)
        if not values:
            continue
        match: ColumnElement[bool] = CatalogFacet.value.in_(values)
        if name == "disease":
            match = or_(match, *(CatalogFacet.value.like(f"{value}.%") for value in values))
        query = query.where(
            CatalogEntry.dataset.in_(select(CatalogFacet.dataset).where(CatalogFacet.facet == name, match))
        )
    if filters.age is not None:
        query = query.where(CatalogEntry.min_age <= filters.age, CatalogEntry.max_age >= filters.age)
    return query


def catalog_info(runtime: Runtime, modified: datetime | None = None) -> CatalogInfo:
    settings = runtime.settings
    base = settings.public_url.rstrip("/")
    return CatalogInfo(
        iri=f"{base}/catalog",
        title={"en": f"{settings.organisation}: imaging datasets for compute-to-data"},
        description={
            "en": "De-identified, encrypted imaging datasets held by this hospital. Outside teams "
            "send their models to the data under the DPO's policies; images never leave."
        },
        publisher=default_publisher(runtime),
        homepage=settings.public_url,
        modified=modified or datetime.now(UTC).replace(microsecond=0),
    )


def catalog_page(
    runtime: Runtime, filters: SearchFilters, page: int, per_page: int, fmt: Format
) -> tuple[str, int]:
    """One page of the catalog (search results when filters are given); (document, total)."""
    with runtime.sessions() as session:
        total = session.execute(
            _filtered(select(func.count()).select_from(CatalogEntry), filters)
        ).scalar_one()
        # Drafts have an empty `modified`, so the newest change of any entry is the catalog's.
        modified = session.execute(select(func.max(CatalogEntry.modified))).scalar_one()
        # The page's keys come from the small entries table (indexes only); documents are read
        # for those rows alone.
        keys = (
            _filtered(select(CatalogEntry.dataset), filters)
            .order_by(CatalogEntry.dataset)
            .limit(per_page)
            .offset((page - 1) * per_page)
            .subquery()
        )
        rows = session.execute(
            select(CatalogDocument.rendered)
            .join(keys, keys.c.dataset == CatalogDocument.dataset)
            .order_by(CatalogDocument.dataset)
        ).scalars()
        records = [RenderedRecord.from_json(json.loads(row)) for row in rows]
    base = runtime.settings.public_url.rstrip("/") + "/catalog"
    query = urlencode(filters.query_items())
    info = catalog_info(runtime, datetime.fromisoformat(modified) if modified else None)
    page_info = PageInfo(page=page, per_page=per_page, total=total, url=base + (f"?{query}" if query else ""))
    return render_catalog_page(info, records, page_info, fmt), total


def whole_catalog(runtime: Runtime, fmt: Format) -> str:
    """Every public record in one document (for `connector catalog export`)."""
    with runtime.sessions() as session:
        total = session.execute(
            select(func.count()).select_from(CatalogEntry).where(CatalogEntry.status.in_(PUBLIC_STATUSES))
        ).scalar_one()
    document, _ = catalog_page(runtime, SearchFilters(), 1, max(total, 1), fmt)
    return document
