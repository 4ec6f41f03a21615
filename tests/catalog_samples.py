"""A complete, valid description of one imaging dataset, for tests of the catalog and its users.

`sample_description(**overrides)` builds a lung-cancer screening cohort held by a Belgian hospital;
any keyword names a field of `StewardFields` or of `DerivedFacts` and replaces it, e.g.
`sample_description(individuals=PublishedCount(None, "<10"), title={"en": "Other"})`. An unknown
keyword is a TypeError, so a typo never silently tests the default. Nothing here reads a file.
"""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, date, datetime
from typing import Any

from catalog.model import (
    AccessService,
    Agent,
    AgeRange,
    Code,
    Contact,
    DatasetDescription,
    DerivedFacts,
    LegalBasis,
    Offer,
    Period,
    PublishedCount,
    Purpose,
    StewardFields,
)

PUBLIC_URL = "https://imaging.hospital.example"
DATASET = "lung-screening-2019"
DATASET_IRI = f"{PUBLIC_URL}/catalog/datasets/{DATASET}"

PUBLISHER = Agent(
    name={"en": "Example University Hospital", "fr": "Hôpital universitaire exemple"},
    country="BE",
    iri=f"{PUBLIC_URL}/#publisher",
    homepage=f"{PUBLIC_URL}/",
)
HDAB = Agent(
    name={"en": "Health Data Agency (Belgian HDAB)", "nl": "Health Data Agency", "fr": "Health Data Agency"},
    country="BE",
    homepage="https://www.healthdata.be/",
    email="access@hda.example.be",
)

STEWARD = StewardFields(
    title={
        "en": "Low-dose chest CT lung cancer screening cohort",
        "fr": "Cohorte de dépistage du cancer du poumon par scanner thoracique à faible dose",
        "de": "Kohorte zur Lungenkrebs-Früherkennung mit Niedrigdosis-Thorax-CT",
    },
    description={
        "en": "De-identified low-dose chest CT and MR studies of adults screened for lung cancer.",
        "fr": "Examens de scanner et d'IRM thoraciques dé-identifiés d'adultes dépistés.",
        "de": "De-identifizierte Thorax-CT- und MR-Untersuchungen gescreenter Erwachsener.",
    },
    contact=Contact(
        name="Imaging data desk", email="imaging-data@hospital.example", url=f"{PUBLIC_URL}/help"
    ),
    hdab=HDAB,
    health_categories=("EHRS", "RQSH"),
    publisher=PUBLISHER,
    keywords={"en": ("lung cancer", "screening", "low-dose CT"), "fr": ("cancer du poumon", "dépistage")},
    themes=("HEAL",),
    diseases=(
        Code("ICD-10", "C34", "Malignant neoplasm of bronchus and lung"),
        Code("SNOMED-CT", "363358000", "Malignant tumor of lung"),
    ),
    population_coverage={"en": "Current and former smokers aged 50 to 80 screened in Belgium, 2019-2024."},
    temporal=Period(date(2019, 1, 1), date(2024, 12, 31)),
    retention=Period(date(2019, 1, 1), date(2039, 12, 31)),
    spatial=("BE",),
    personal_data=("HealthRecord", "MedicalImaging", "AgeRange", "Gender"),
    access_rights="NON_PUBLIC",
    languages=("en", "fr", "de"),
    documentation=f"{PUBLIC_URL}/cohorts/lung-screening",
    provenance={"en": "Studies from the hospital PACS, de-identified inside the hospital (DICOM PS3.15)."},
)

OFFER = Offer(
    purposes=(
        Purpose(
            "scientific-research",
            "scientific research related to health",
            "53(1)(e)",
            "https://w3id.org/dpv#ScientificResearch",
        ),
        Purpose(
            "ai-development",
            "training, testing and evaluating of algorithms",
            "53(1)(e)(ii)",
            "https://w3id.org/dpv#ResearchAndDevelopment",
        ),
        Purpose(
            "care-improvement", "improving health care", "53(1)(f)", "https://w3id.org/dpv#ImproveHealthcare"
        ),
    ),
    legal_basis=LegalBasis(
        code="public-interest",
        dpv="https://w3id.org/dpv#PublicInterest",
        gdpr=("https://w3id.org/dpv/legal/eu/gdpr#A6-1-e", "https://w3id.org/dpv/legal/eu/gdpr#A9-2-i"),
    ),
    countries=("BE", "NL", "FR", "DE", "LU"),
    k=10,
)

FACTS = DerivedFacts(
    identifier=DATASET,
    iri=DATASET_IRI,
    records=PublishedCount(1284, "1284"),
    individuals=PublishedCount(412, "412"),
    age=AgeRange(50, 79),
    modalities=("CT", "MR", "SR"),
    body_parts=("CHEST", "LUNG"),
    offer=OFFER,
    service=AccessService(
        iri=f"{PUBLIC_URL}/catalog/services/compute-to-data",
        endpoint_url=f"{PUBLIC_URL}/v1",
        endpoint_description=f"{PUBLIC_URL}/openapi.json",
        title={"en": "Compute-to-data: models run on the data inside the hospital; only results leave"},
    ),
    version="3",
    issued=datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
    modified=datetime(2025, 6, 12, 14, 5, tzinfo=UTC),
)

_STEWARD_FIELDS = frozenset(f.name for f in fields(StewardFields))
_FACT_FIELDS = frozenset(f.name for f in fields(DerivedFacts))


def sample_description(**overrides: Any) -> DatasetDescription:
    """The sample dataset's description with `overrides` applied to the steward's fields or the facts."""
    unknown = set(overrides) - _STEWARD_FIELDS - _FACT_FIELDS
    if unknown:
        raise TypeError(f"no field {', '.join(sorted(unknown))} in StewardFields or DerivedFacts")
    steward = replace(STEWARD, **{k: v for k, v in overrides.items() if k in _STEWARD_FIELDS})
    facts = replace(FACTS, **{k: v for k, v in overrides.items() if k in _FACT_FIELDS})
    return DatasetDescription(steward, facts)
