"""RDF namespaces and the small controlled-vocabulary subsets a HealthDCAT-AP record uses.

Every entry has its IRI, an English `skos:prefLabel` and the IRI of the scheme it belongs to, because
the official DCAT-AP range shapes only accept a controlled-vocabulary IRI when its entry (a
skos:Concept with a label, in the right scheme) is in the data graph; `catalog.record` writes those
entries from here. Look-ups return None for a code that is not in our subset (`country("XX")`), so
callers can report an unknown code in plain words; the code checks (`icd10_iri`, `snomed_iri`) raise
`UnknownCode` with a message a data steward understands.

This module only holds vocabulary: it never reads a file, never touches the network and never
guesses an IRI for a code it does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

import langcodes
from rdflib import Namespace, URIRef
from rdflib.namespace import FOAF, ODRL2, RDF, RDFS, SKOS, XSD

# --- Namespaces ----------------------------------------------------------------------------------
ADMS = Namespace("http://www.w3.org/ns/adms#")
DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCT = Namespace("http://purl.org/dc/terms/")
DCATAP = Namespace("http://data.europa.eu/r5r/")
HEALTHDCATAP = Namespace("http://healthdataportal.eu/ns/health#")
DPV = Namespace("https://w3id.org/dpv#")
DPV_PD = Namespace("https://w3id.org/dpv/pd#")
# DPV's health-sector extension: it (not dpv-pd) defines "MedicalImaging" (DPV 2.3, sector/health).
DPV_HEALTH = Namespace("https://w3id.org/dpv/sector/health#")
EU_GDPR = Namespace("https://w3id.org/dpv/legal/eu/gdpr#")
ODRL = ODRL2  # http://www.w3.org/ns/odrl/2/
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
LOCN = Namespace("http://www.w3.org/ns/locn#")
ELI = Namespace("http://data.europa.eu/eli/ontology#")


# The fixed prefixes of every document this package writes: the shared Turtle header, the JSON-LD
# @context and the RDF/XML bindings all come from this one table, so pre-rendered pieces written
# months apart still fit the same page header.
PREFIXES: MappingProxyType[str, str] = MappingProxyType(
    {
        "adms": str(ADMS),
        "dcat": str(DCAT),
        "dcatap": str(DCATAP),
        "dct": str(DCT),
        "dpv": str(DPV),
        "dpv-pd": str(DPV_PD),
        "dpv-health": str(DPV_HEALTH),
        "eu-gdpr": str(EU_GDPR),
        "eli": str(ELI),
        "foaf": str(FOAF),
        "healthdcatap": str(HEALTHDCATAP),
        "hydra": str(HYDRA),
        "locn": str(LOCN),
        "odrl": str(ODRL),
        "rdf": str(RDF),
        "rdfs": str(RDFS),
        "skos": str(SKOS),
        "vcard": str(VCARD),
        "xsd": str(XSD),
    }
)


class UnknownCode(ValueError):
    """A code that is not in the vocabulary, or not well formed; the message says which and why."""


@dataclass(frozen=True)
class Term:
    """One entry of a controlled vocabulary."""

    code: str
    iri: URIRef
    label: str  # English skos:prefLabel
    scheme: URIRef  # the skos:ConceptScheme (authority table) it belongs to


def _table(scheme: str, base: str, entries: dict[str, str]) -> MappingProxyType[str, Term]:
    scheme_iri = URIRef(scheme)
    return MappingProxyType(
        {code: Term(code, URIRef(base + code), label, scheme_iri) for code, label in entries.items()}
    )


# --- EU authority tables (Publications Office, EU Vocabularies) ---------------------------------
_AUTHORITY = "http://publications.europa.eu/resource/authority/"

ACCESS_RIGHT_SCHEME = URIRef(_AUTHORITY + "access-right")
# A catalog record of this connector never describes public data: only these two are offered.
ACCESS_RIGHTS = _table(
    str(ACCESS_RIGHT_SCHEME),
    _AUTHORITY + "access-right/",
    {"NON_PUBLIC": "Non-public", "RESTRICTED": "Restricted"},
)

DATA_THEME_SCHEME = URIRef(_AUTHORITY + "data-theme")
DATA_THEMES = _table(
    str(DATA_THEME_SCHEME),
    _AUTHORITY + "data-theme/",
    {
        "AGRI": "Agriculture, fisheries, forestry and food",
        "ECON": "Economy and finance",
        "EDUC": "Education, culture and sport",
        "ENER": "Energy",
        "ENVI": "Environment",
        "GOVE": "Government and public sector",
        "HEAL": "Health",
        "INTR": "International issues",
        "JUST": "Justice, legal system and public safety",
        "REGI": "Regions and cities",
        "SOCI": "Population and society",
        "TECH": "Science and technology",
        "TRAN": "Transport",
    },
)

DATASET_STATUS_SCHEME = URIRef(_AUTHORITY + "dataset-status")
# A withdrawn record stays in the catalog marked DEPRECATED, so harvesters learn that it is gone.
DATASET_STATUS = _table(
    str(DATASET_STATUS_SCHEME),
    _AUTHORITY + "dataset-status/",
    {"COMPLETED": "Completed", "DEPRECATED": "Deprecated"},
)

COUNTRY_SCHEME = URIRef(_AUTHORITY + "country")
# ISO 3166-1 alpha-2 -> (EU authority code, which is ISO alpha-3, English name): the EU and EEA,
# plus the few non-EEA countries EU research projects commonly involve.
_COUNTRY_CODES: dict[str, tuple[str, str]] = {
    "AT": ("AUT", "Austria"),
    "BE": ("BEL", "Belgium"),
    "BG": ("BGR", "Bulgaria"),
    "CY": ("CYP", "Cyprus"),
    "CZ": ("CZE", "Czechia"),
    "DE": ("DEU", "Germany"),
    "DK": ("DNK", "Denmark"),
    "EE": ("EST", "Estonia"),
    "ES": ("ESP", "Spain"),
    "FI": ("FIN", "Finland"),
    "FR": ("FRA", "France"),
    "GR": ("GRC", "Greece"),
    "HR": ("HRV", "Croatia"),
    "HU": ("HUN", "Hungary"),
    "IE": ("IRL", "Ireland"),
    "IT": ("ITA", "Italy"),
    "LT": ("LTU", "Lithuania"),
    "LU": ("LUX", "Luxembourg"),
    "LV": ("LVA", "Latvia"),
    "MT": ("MLT", "Malta"),
    "NL": ("NLD", "Netherlands"),
    "PL": ("POL", "Poland"),
    "PT": ("PRT", "Portugal"),
    "RO": ("ROU", "Romania"),
    "SE": ("SWE", "Sweden"),
    "SI": ("SVN", "Slovenia"),
    "SK": ("SVK", "Slovakia"),
    "IS": ("ISL", "Iceland"),
    "LI": ("LIE", "Liechtenstein"),
    "NO": ("NOR", "Norway"),
    "CH": ("CHE", "Switzerland"),
    "GB": ("GBR", "United Kingdom"),
    "US": ("USA", "United States"),
    "CA": ("CAN", "Canada"),
}
# The EU writes Greece "EL" in its own code lists; accept it as the same country.
_COUNTRY_ALIASES = {"EL": "GR"}
COUNTRIES: MappingProxyType[str, Term] = MappingProxyType(
    {
        alpha2: Term(alpha2, URIRef(_AUTHORITY + "country/" + alpha3), name, COUNTRY_SCHEME)
        for alpha2, (alpha3, name) in _COUNTRY_CODES.items()
    }
)

LANGUAGE_SCHEME = URIRef(_AUTHORITY + "language")
# ISO 639-1 -> (EU authority code, English name): the EU's 24 official languages and those of EEA
# members and Luxembourg.
_LANGUAGE_CODES: dict[str, tuple[str, str]] = {
    "bg": ("BUL", "Bulgarian"),
    "cs": ("CES", "Czech"),
    "da": ("DAN", "Danish"),
    "de": ("DEU", "German"),
    "el": ("ELL", "Greek"),
    "en": ("ENG", "English"),
    "es": ("SPA", "Spanish"),
    "et": ("EST", "Estonian"),
    "fi": ("FIN", "Finnish"),
    "fr": ("FRA", "French"),
    "ga": ("GLE", "Irish"),
    "hr": ("HRV", "Croatian"),
    "hu": ("HUN", "Hungarian"),
    "it": ("ITA", "Italian"),
    "lt": ("LIT", "Lithuanian"),
    "lv": ("LAV", "Latvian"),
    "mt": ("MLT", "Maltese"),
    "nl": ("NLD", "Dutch"),
    "pl": ("POL", "Polish"),
    "pt": ("POR", "Portuguese"),
    "ro": ("RON", "Romanian"),
    "sk": ("SLK", "Slovak"),
    "sl": ("SLV", "Slovenian"),
    "sv": ("SWE", "Swedish"),
    "is": ("ISL", "Icelandic"),
    "no": ("NOR", "Norwegian"),
    "nb": ("NOB", "Norwegian Bokmål"),
    "nn": ("NNO", "Norwegian Nynorsk"),
    "lb": ("LTZ", "Luxembourgish"),
}
LANGUAGES: MappingProxyType[str, Term] = MappingProxyType(
    {
        iso: Term(iso, URIRef(_AUTHORITY + "language/" + eu), name, LANGUAGE_SCHEME)
        for iso, (eu, name) in _LANGUAGE_CODES.items()
    }
)

# --- Legislation (ELI) ---------------------------------------------------------------------------
LEGISLATION_EHDS = URIRef("http://data.europa.eu/eli/reg/2025/327/oj")
LEGISLATION_GDPR = URIRef("http://data.europa.eu/eli/reg/2016/679/oj")
LEGISLATION: MappingProxyType[URIRef, str] = MappingProxyType(
    {
        LEGISLATION_EHDS: "Regulation (EU) 2025/327 on the European Health Data Space",
        LEGISLATION_GDPR: "Regulation (EU) 2016/679 (General Data Protection Regulation)",
    }
)

# --- HealthDCAT-AP health categories (EHDS Regulation (EU) 2025/327, article 51(1)) ------------
# Codes and scheme as HealthDCAT-AP publishes them. Source: the HealthDCAT-AP specification,
# Release 6 §10.3.1 ("Health categories" controlled vocabulary), whose codes were served from a
# development host (http://13.81.34.152:1101/resource/authority/healthcategories/); Release 8
# moved DG SANTE's vocabularies to the production base https://hdeu-dcat.data.health.europa.eu/
# resource/authority/ with the same codes. ckanext-dcat's HealthDCAT-AP examples
# (examples/dcat/dataset_health.ttl) use the same codes under a placeholder host. Labels follow
# the wording of article 51(1), letters (a) to (q).
HEALTH_CATEGORY_SCHEME = URIRef("https://hdeu-dcat.data.health.europa.eu/resource/authority/healthcategories")
HEALTH_CATEGORIES = _table(
    str(HEALTH_CATEGORY_SCHEME),
    str(HEALTH_CATEGORY_SCHEME) + "/",
    {
        "EHRS": "Electronic health data from electronic health records",
        "DIOH": "Data on factors impacting on health, including socio-economic, environmental and "
        "behavioural determinants of health",
        "NRPE": "Aggregated data on healthcare needs, resources allocated to healthcare, the provision "
        "of and access to healthcare, healthcare expenditure and financing",
        "RPDG": "Data on pathogens that impact human health",
        "HRAD": "Healthcare-related administrative data, including on dispensations, reimbursement "
        "claims and reimbursements",
        "HGPD": "Human genetic, epigenomic and genomic data",
        "HPML": "Other human molecular data such as proteomic, transcriptomic, metabolomic, "
        "lipidomic and other omic data",
        "PGEH": "Personal electronic health data automatically generated through medical devices",
        "WELA": "Data from wellness applications",
        "IDHP": "Data on professional status, and on the specialisation and institution of health "
        "professionals involved in the treatment of a natural person",
        "PHDR": "Data from population-based health data registries such as public health registries",
        "MRMR": "Data from medical registries and mortality registries",
        "EHCT": "Data from clinical trials, clinical studies, clinical investigations and performance "
        "studies",
        "EMRD": "Other health data from medical devices",
        "RMMD": "Data from registries for medicinal products and medical devices",
        "RQSH": "Data from research cohorts, questionnaires and surveys related to health, after the "
        "first publication of the related results",
        "EINS": "Health data from biobanks and associated databases",
    },
)

# --- DPV personal-data categories ----------------------------------------------------------------
# dpv-pd (DPV 2.x) terms, plus the health-sector extension's "MedicalImaging" (medical imaging
# studies and related imaging reports), which dpv-pd itself does not have.
_PERSONAL_DATA_PD = {
    "Age": "Age",
    "AgeRange": "Age Range",
    "Gender": "Gender",
    "Genetic": "Genetic",
    "Health": "Health",
    "HealthHistory": "Health History",
    "HealthRecord": "Health Record",
    "MedicalHealth": "Medical Health",
    "PhysicalHealth": "Physical Health",
    "Prescription": "Prescription",
    "Weight": "Weight",
    "Height": "Height",
}
_PERSONAL_DATA_HEALTH = {
    "MedicalImaging": "Medical Imaging",
    "MedicalTestResult": "Medical Test Result",
    "EHRData": "Electronic Health Record (EHR) Data",
}
_PERSONAL_DATA_SCHEME_PD = URIRef("https://w3id.org/dpv/pd")
_PERSONAL_DATA_SCHEME_HEALTH = URIRef("https://w3id.org/dpv/sector/health")
PERSONAL_DATA: MappingProxyType[str, Term] = MappingProxyType(
    {
        **{
            code: Term(code, DPV_PD[code], label, _PERSONAL_DATA_SCHEME_PD)
            for code, label in _PERSONAL_DATA_PD.items()
        },
        **{
            code: Term(code, DPV_HEALTH[code], label, _PERSONAL_DATA_SCHEME_HEALTH)
            for code, label in _PERSONAL_DATA_HEALTH.items()
        },
    }
)
# The model's default says "MedicalImage"; DPV's term is "MedicalImaging". Same thing.
_PERSONAL_DATA_ALIASES = {"MedicalImage": "MedicalImaging"}

# --- DICOM ---------------------------------------------------------------------------------------
# Modality codes are DICOM "DCM" code values; the DCM ontology publishes each as
# http://dicom.nema.org/resources/ontology/DCM/<code>.
DICOM_SCHEME = URIRef("http://dicom.nema.org/resources/ontology/DCM")
MODALITIES = _table(
    str(DICOM_SCHEME),
    str(DICOM_SCHEME) + "/",
    {
        # CID 29 "Acquisition Modality"
        "AR": "Autorefraction",
        "BMD": "Bone Mineral Densitometry",
        "BDUS": "Ultrasound Bone Densitometry",
        "CR": "Computed Radiography",
        "CT": "Computed Tomography",
        "DX": "Digital Radiography",
        "ECG": "Electrocardiography",
        "EPS": "Cardiac Electrophysiology",
        "ES": "Endoscopy",
        "GM": "General Microscopy",
        "HD": "Hemodynamic Waveform",
        "IO": "Intra-oral Radiography",
        "IVOCT": "Intravascular Optical Coherence Tomography",
        "IVUS": "Intravascular Ultrasound",
        "KER": "Keratometry",
        "LEN": "Lensometry",
        "MG": "Mammography",
        "MR": "Magnetic Resonance",
        "NM": "Nuclear Medicine",
        "OAM": "Ophthalmic Axial Measurements",
        "OCT": "Optical Coherence Tomography",
        "OP": "Ophthalmic Photography",
        "OPM": "Ophthalmic Mapping",
        "OPT": "Ophthalmic Tomography",
        "OPV": "Ophthalmic Visual Field",
        "PT": "Positron emission tomography",
        "PX": "Panoramic X-Ray",
        "RF": "Radiofluoroscopy",
        "RG": "Radiographic imaging",
        "SM": "Slide Microscopy",
        "SRF": "Subjective Refraction",
        "US": "Ultrasound",
        "VA": "Visual Acuity",
        "XA": "X-Ray Angiography",
        "XC": "External-camera Photography",
        # CID 33 "Modality" values that are not acquisitions but do appear as a series' Modality
        # (reports, segmentations, presentation states...). A cohort that holds them must not be
        # refused for it.
        "DOC": "Document",
        "KO": "Key Object Selection",
        "OT": "Other",
        "PR": "Presentation State",
        "REG": "Registration",
        "RTDOSE": "Radiotherapy Dose",
        "RTIMAGE": "Radiotherapy Image",
        "RTPLAN": "Radiotherapy Plan",
        "RTSTRUCT": "Radiotherapy Structure Set",
        "SEG": "Segmentation",
        "SR": "SR Document",
    },
)


@dataclass(frozen=True)
class BodyPart:
    """A DICOM Body Part Examined defined term (PS3.16 Annex L) and, where we are sure of it, the
    SNOMED CT concept Annex L maps it to."""

    term: str
    label: str
    snomed: str = ""  # SCTID; empty when we do not state one


_BODY_PART_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("ABDOMEN", "Abdomen", ""),
    ("ABDOMENPELVIS", "Abdomen and Pelvis", ""),
    ("ANKLE", "Ankle joint", "70258002"),
    ("AORTA", "Aorta", "15825003"),
    ("ARM", "Arm", ""),
    ("BLADDER", "Urinary bladder", "89837001"),
    ("BRAIN", "Brain", "12738006"),
    ("BREAST", "Breast", "76752008"),
    ("CHEST", "Chest", "51185008"),
    ("CHESTABDOMEN", "Chest and Abdomen", ""),
    ("CHESTABDPELVIS", "Chest, Abdomen and Pelvis", ""),
    ("COLON", "Colon", "71854001"),
    ("CSPINE", "Cervical spine", "122494005"),
    ("ELBOW", "Elbow joint", ""),
    ("EXTREMITY", "Extremity", ""),
    ("EYE", "Eye", "81745001"),
    ("FOOT", "Foot", "56459004"),
    ("HAND", "Hand", "85562004"),
    ("HEAD", "Head", "69536005"),
    ("HEADNECK", "Head and Neck", "774007"),
    ("HEART", "Heart", "80891009"),
    ("HIP", "Hip joint", "24136001"),
    ("KIDNEY", "Kidney", "64033007"),
    ("KNEE", "Knee", "72696002"),
    ("LEG", "Leg", ""),
    ("LIVER", "Liver", "10200004"),
    ("LSPINE", "Lumbar spine", "122496007"),
    ("LUNG", "Lung", "39607008"),
    ("NECK", "Neck", "45048000"),
    ("PANCREAS", "Pancreas", "15776009"),
    ("PELVIS", "Pelvis", ""),
    ("PROSTATE", "Prostate", "41216001"),
    ("SHOULDER", "Shoulder", "16982005"),
    ("SKULL", "Skull", "89546000"),
    ("SPINE", "Spine", ""),
    ("SPLEEN", "Spleen", "78961009"),
    ("STOMACH", "Stomach", "69695003"),
    ("THYROID", "Thyroid", "69748006"),
    ("TSPINE", "Thoracic spine", "122495006"),
    ("UTERUS", "Uterus", "35039007"),
    ("WHOLEBODY", "Entire body", "38266002"),
    ("WRIST", "Wrist joint", "74670003"),
)
BODY_PARTS: MappingProxyType[str, BodyPart] = MappingProxyType(
    {term: BodyPart(term, label, snomed) for term, label, snomed in _BODY_PART_ENTRIES}
)

# --- Coding systems of disease codes -------------------------------------------------------------
# healthdcatap:hasCodingSystem takes Wikidata IRIs (ckanext-dcat docs/mapping-healthdcat.md):
# P494 is "ICD-10 ID", P5806 "SNOMED CT identifier".
ICD10_CODING_SYSTEM = URIRef("https://www.wikidata.org/entity/P494")
SNOMED_CODING_SYSTEM = URIRef("https://www.wikidata.org/entity/P5806")
ICD10_SCHEME = URIRef("http://id.who.int/icd/release/10")
SNOMED_SCHEME = URIRef("http://snomed.info/sct")

_ICD10 = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
_SCTID = re.compile(r"^[1-9][0-9]{5,17}$")

# Verhoeff's dihedral-group tables (multiplication d, permutation p), as SNOMED CT uses them for
# the check digit of every identifier.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_valid(digits: str) -> bool:
    """True when the last digit of `digits` is the Verhoeff check digit of the others."""
    if not digits.isdigit() or not digits.isascii():
        return False
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _D[check][_P[position % 8][int(digit)]]
    return check == 0


def icd10_iri(code: str) -> URIRef:
    """The WHO IRI of an ICD-10 code such as "C34" or "C34.1"; UnknownCode when it is not one."""
    if not _ICD10.match(code):
        raise UnknownCode(
            f'"{code}" is not an ICD-10 code: write a letter, two digits and optionally a dot with up '
            'to four more characters, e.g. "C34" or "C34.1"'
        )
    return URIRef(f"http://id.who.int/icd/release/10/{code}")


def snomed_iri(sctid: str) -> URIRef:
    """The IRI of a SNOMED CT concept identifier; UnknownCode when it is not a valid concept id."""
    if not _SCTID.match(sctid):
        raise UnknownCode(
            f'"{sctid}" is not a SNOMED CT identifier: it must be 6 to 18 digits, not starting with 0'
        )
    if not verhoeff_valid(sctid):
        raise UnknownCode(
            f'"{sctid}" is not a SNOMED CT identifier: its last digit is not the right check digit '
            "(a digit was probably mistyped)"
        )
    # The two digits before the check digit say what the identifier names; 00 and 10 are concepts
    # (international and extension); descriptions and relationships are not codes for a disease.
    if sctid[-3:-1] not in ("00", "10"):
        raise UnknownCode(
            f'"{sctid}" is a SNOMED CT identifier but not of a concept (it names a description or '
            "a relationship): use the concept id"
        )
    return URIRef(f"http://snomed.info/id/{sctid}")


_BCP47 = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")


def tag_is_valid(tag: str) -> bool:
    """A well-formed BCP 47 language tag whose subtags are registered ("en", "fr-BE"; not
    "english", not "en_US"): langcodes alone tolerates the underscore, rdflib would not."""
    return bool(_BCP47.match(tag)) and langcodes.tag_is_valid(tag)


def country(code: str) -> Term | None:
    """The EU authority entry of an ISO 3166-1 alpha-2 code ("BE"; "EL" is read as "GR")."""
    return COUNTRIES.get(_COUNTRY_ALIASES.get(code, code))


def language(code: str) -> Term | None:
    """The EU authority entry of an ISO 639-1 language code ("en")."""
    return LANGUAGES.get(code)


def health_category(code: str) -> Term | None:
    return HEALTH_CATEGORIES.get(code)


def modality(code: str) -> Term | None:
    return MODALITIES.get(code)


def body_part(term: str) -> BodyPart | None:
    return BODY_PARTS.get(term)


def personal_data(code: str) -> Term | None:
    """The DPV term of a personal-data code ("HealthRecord", "MedicalImaging")."""
    return PERSONAL_DATA.get(_PERSONAL_DATA_ALIASES.get(code, code))


def body_part_iri(dataset_iri: str, part: str) -> URIRef:
    """The concept IRI of a body part: its SNOMED CT concept when we know it; otherwise a node
    under the dataset (DICOM publishes no IRI for its Body Part Examined terms, and we will not
    invent one in someone else's namespace)."""
    known = BODY_PARTS.get(part)
    if known is not None and known.snomed:
        return URIRef(f"http://snomed.info/id/{known.snomed}")
    return URIRef(f"{dataset_iri}#body-part-{quote(part, safe='')}")
