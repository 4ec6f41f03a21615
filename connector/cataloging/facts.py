"""What a catalog record says that the connector derives: counts, age range, modalities, body
parts and the offer, computed on the de-identified index of the patients the consent policy
includes, and passed through the DPO's small-cell rule before anything leaves this module.

It never returns a raw count below k, a real age or a pseudonym; counts and terms come from the
active Rego policy (`data.connector.catalog.record`), never from rules written here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from catalog import vocab
from catalog.model import (
    AccessService,
    AgeRange,
    DerivedFacts,
    LegalBasis,
    Offer,
    PublishedCount,
    Purpose,
    RecordStatus,
)
from connector.datasets.models import DatasetRecord, StudyRecord
from connector.runtime import Runtime


class NoCatalogTerms(Exception):
    """The active policy gives the dataset no valid terms, so no record can state them."""


@dataclass(frozen=True)
class IndexCounts:
    """Raw counts over the included patients: internal only, never published as they are."""

    records: int  # studies
    individuals: int  # patients
    patients_by_age_band: dict[str, int]
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]


def index_counts(runtime: Runtime, dataset: str) -> IndexCounts:
    """Counts of the patients the consent policy includes (after opt-outs and withdrawals)."""
    with runtime.sessions() as session:
        exists = session.get(DatasetRecord, dataset) is not None
        rows = (
            session.execute(
                select(
                    StudyRecord.patient_pseudonym,
                    StudyRecord.modalities,
                    StudyRecord.body_part,
                    StudyRecord.age_band,
                ).where(StudyRecord.dataset == dataset)
            ).all()
            if exists
            else []
        )
    if not rows:
        return IndexCounts(0, 0, {}, (), ())
    included = set(runtime.policy.cohort(dataset).included)
    rows = [row for row in rows if row.patient_pseudonym in included]
    band_of: dict[str, str] = {}
    for row in rows:
        # A patient's band at their first study with an age: one band per person, counted once.
        if row.age_band and row.patient_pseudonym not in band_of:
            band_of[row.patient_pseudonym] = row.age_band
    # Only codes of the DICOM vocabularies are published: a PACS also writes local or misspelt
    # values ("THORAX ", "Lunge"), which a catalog cannot resolve and must not refuse a record for.
    modalities = {m for row in rows for m in row.modalities.split(",") if vocab.modality(m.strip())}
    body_parts = {row.body_part.strip().upper() for row in rows if row.body_part}
    return IndexCounts(
        records=len(rows),
        individuals=len({row.patient_pseudonym for row in rows}),
        patients_by_age_band=dict(Counter(band_of.values())),
        modalities=tuple(sorted(m.strip() for m in modalities)),
        body_parts=tuple(sorted(part for part in body_parts if vocab.body_part(part))),
    )


def _band_edges(band: str) -> tuple[int, int]:
    # Bands are written by connector.datasets.ingest.age_band: "40-49" or "90+".
    if band.endswith("+"):
        low = int(band[:-1])
        return low, low
    first, last = band.split("-")
    return int(first), int(last)


def banded_age_range(patients_by_band: dict[str, int], k: int) -> AgeRange:
    """The typical age range with both tails top- and bottom-coded: the minimum is the lower edge of
    the band where at least k patients are at or below it, the maximum the upper edge of the band
    where at least k are at or above it. Fewer than k patients with an age: no range at all."""
    bands = sorted(
        ((_band_edges(band), count) for band, count in patients_by_band.items() if count > 0),
        key=lambda item: item[0],
    )
    if sum(count for _, count in bands) < k or not bands:
        return AgeRange(None, None)
    seen = 0
    for (low, high), count in bands:
        seen += count
        if seen >= k:
            minimum, minimum_band_high = low, high
            break
    seen = 0
    for (low, high), count in reversed(bands):
        seen += count
        if seen >= k:
            maximum, maximum_band_low = high, low
            break
    if minimum > maximum:
        # Both tails needed the middle to reach k: the range is the span of those two bands.
        return AgeRange(maximum_band_low, minimum_band_high)
    return AgeRange(minimum, maximum)


def _published(value: Any, raw: int) -> PublishedCount:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise NoCatalogTerms(f"the policy returned an unusable count {value!r}")
    if isinstance(value, str):
        return PublishedCount(None, value)
    if int(value) != raw:
        raise NoCatalogTerms("the policy changed a count instead of showing or suppressing it")
    return PublishedCount(int(value), str(int(value)))


def offer_from_policy(terms: dict[str, Any]) -> Offer:
    basis = terms["legal_basis"]
    return Offer(
        purposes=tuple(
            Purpose(code=p["code"], label=p["label"], article=p["article"], dpv=p["dpv"])
            for p in terms["purposes"]
        ),
        legal_basis=LegalBasis(code=basis["code"], dpv=basis["dpv"], gdpr=tuple(basis["gdpr"])),
        countries=tuple(terms["countries"]),
        k=int(terms["k"]),
    )


def access_service(public_url: str) -> AccessService:
    base = public_url.rstrip("/")
    return AccessService(
        iri=f"{base}/catalog/services/compute-to-data",
        endpoint_url=f"{base}/v1",
        endpoint_description=f"{base}/openapi.json",
        title={"en": "Compute-to-data: models run on the data inside the hospital; only results leave"},
    )


def record_iri(public_url: str, dataset: str) -> str:
    return f"{public_url.rstrip('/')}/catalog/datasets/{dataset}"


def derive_facts(
    runtime: Runtime,
    dataset: str,
    *,
    version: str,
    issued: datetime,
    modified: datetime,
    status: RecordStatus,
) -> DerivedFacts:
    """Every derived field of the dataset's record; raises NoCatalogTerms without valid terms."""
    counts = index_counts(runtime, dataset)
    record = runtime.policy.catalog_record(
        dataset, {"records": counts.records, "individuals": counts.individuals}
    )
    if record is None:
        raise NoCatalogTerms(
            f"the active policy gives dataset {dataset!r} no valid terms (purposes, legal basis, "
            "countries and k in policies/data.json), so its record cannot state them"
        )
    try:
        offer = offer_from_policy(record["offer"])
        shown = record["counts"]
        records = _published(shown["records"], counts.records)
        individuals = _published(shown["individuals"], counts.individuals)
    except (KeyError, TypeError, ValueError) as exc:
        raise NoCatalogTerms(f"the policy's catalog record for {dataset!r} is malformed: {exc}") from None
    public_url = runtime.settings.public_url
    return DerivedFacts(
        identifier=dataset,
        iri=record_iri(public_url, dataset),
        records=records,
        individuals=individuals,
        age=banded_age_range(counts.patients_by_age_band, offer.k),
        modalities=counts.modalities,
        body_parts=counts.body_parts,
        offer=offer,
        service=access_service(public_url),
        version=version,
        issued=issued,
        modified=modified,
        status=status,
    )
