"""The description of one imaging dataset, as a catalog record states it.

A description has two halves: what the hospital's data steward writes (`StewardFields`: titles,
contacts, codes, coverage) and what the connector derives from the de-identified index and the
DPO's policy (`DerivedFacts`: counts already suppressed, age range already banded, the ODRL terms,
the compute-to-data service, version and dates). This module only holds values: it never reads a
file, never computes a count and never suppresses one (the caller hands published values in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

# Text in several languages: BCP 47 language tag -> text, e.g. {"en": "...", "fr": "..."}.
LangText = dict[str, str]

AccessRights = Literal["NON_PUBLIC", "RESTRICTED"]
RecordStatus = Literal["active", "withdrawn"]
CodeSystem = Literal["ICD-10", "SNOMED-CT"]


@dataclass(frozen=True)
class Agent:
    """An organisation: the publisher (the hospital) or the Health Data Access Body."""

    name: LangText
    country: str  # ISO 3166-1 alpha-2, e.g. "BE"
    iri: str = ""  # its identifier as an IRI; derived from the name when empty
    homepage: str = ""
    email: str = ""


@dataclass(frozen=True)
class Contact:
    """Who answers questions about the dataset (a vcard:Kind)."""

    name: str
    email: str
    url: str = ""


@dataclass(frozen=True)
class Code:
    """A disease or condition the dataset is about, in a named coding system."""

    system: CodeSystem
    code: str
    label: str = ""


@dataclass(frozen=True)
class Period:
    """A closed or open-ended period of time (dct:PeriodOfTime)."""

    start: date | None = None
    end: date | None = None


@dataclass(frozen=True)
class StewardFields:
    """What the data steward writes about a dataset (TOML file or API); nothing derivable."""

    title: LangText
    description: LangText
    contact: Contact
    hdab: Agent
    health_categories: tuple[str, ...]  # HealthDCAT-AP health category codes
    publisher: Agent | None = None  # None: the connector's own organisation
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)  # language -> keywords
    themes: tuple[str, ...] = ("HEAL",)  # EU data themes (authority table data-theme)
    diseases: tuple[Code, ...] = ()
    population_coverage: LangText = field(default_factory=dict)
    temporal: Period | None = None
    retention: Period | None = None
    spatial: tuple[str, ...] = ()  # ISO 3166-1 alpha-2; empty: the publisher's country
    personal_data: tuple[str, ...] = ("HealthRecord", "MedicalImage")  # DPV personal data terms
    access_rights: AccessRights = "NON_PUBLIC"
    languages: tuple[str, ...] = ("en",)  # languages of the records' text (ISO 639-1)
    documentation: str = ""  # a landing page describing the cohort
    # How the data came to be (collection, selection, preparation): dct:provenance, which
    # HealthDCAT-AP asks of non-public datasets.
    provenance: LangText = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedCount:
    """A count as the catalog may show it: exact (value set) or suppressed below k (value None)."""

    value: int | None
    text: str  # "128", or "<10" when suppressed

    @property
    def suppressed(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class AgeRange:
    """The typical age range, in years, already banded (band edges only, never a real age)."""

    minimum: int | None
    maximum: int | None


@dataclass(frozen=True)
class Purpose:
    """A permitted purpose of secondary use: our code, the EHDS article, the DPV purpose IRI."""

    code: str
    label: str
    article: str
    dpv: str


@dataclass(frozen=True)
class LegalBasis:
    code: str
    dpv: str  # DPV legal basis IRI
    gdpr: tuple[str, ...]  # DPV-GDPR article IRIs (art. 6 and art. 9 grounds)


@dataclass(frozen=True)
class Offer:
    """The dataset's terms as the DPO's Rego policy states them, published as an ODRL offer."""

    purposes: tuple[Purpose, ...]
    legal_basis: LegalBasis
    countries: tuple[str, ...]  # ISO 3166-1 alpha-2 of the countries requesters may be in
    k: int  # minimum cohort size


@dataclass(frozen=True)
class AccessService:
    """The compute-to-data endpoint of this connector (a dcat:DataService, never a download)."""

    iri: str
    endpoint_url: str
    endpoint_description: str  # URL of the OpenAPI description
    title: LangText


@dataclass(frozen=True)
class DerivedFacts:
    """What the connector derives from the data and the policy; the steward never sets these."""

    identifier: str  # the dataset's name in this connector
    iri: str  # the record's IRI: <public_url>/catalog/datasets/<identifier>
    records: PublishedCount  # studies
    individuals: PublishedCount  # unique patients (after opt-outs)
    age: AgeRange
    modalities: tuple[str, ...]  # DICOM modality codes (CID 29), e.g. "CT", "MR"
    body_parts: tuple[str, ...]  # DICOM Body Part Examined values, e.g. "CHEST"
    offer: Offer
    service: AccessService
    version: str
    issued: datetime
    modified: datetime
    status: RecordStatus = "active"


@dataclass(frozen=True)
class DatasetDescription:
    steward: StewardFields
    facts: DerivedFacts

    @property
    def publisher(self) -> Agent:
        assert self.steward.publisher is not None, "the connector fills in the publisher"
        return self.steward.publisher


@dataclass(frozen=True)
class CatalogInfo:
    """The catalog itself (dcat:Catalog): this connector's public catalog."""

    iri: str
    title: LangText
    description: LangText
    publisher: Agent
    homepage: str
    modified: datetime
    languages: tuple[str, ...] = ("en",)
