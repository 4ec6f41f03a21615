"""Invented people and places for a synthetic patient: the patient, their hospital and its staff.

Names and addresses come from Faker instances seeded from the cohort seed, in several European
locales so that accented, cross-border names appear. Dates come from the seeded ``random.Random``
only. This module never uses real patient data, never reads the clock (Faker's date and
national-ID helpers do, so they are not used) and never writes files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache

from faker import Faker

#: locale -> (country calling code, ISO 3166 country code, institution name pattern)
LOCALES: dict[str, tuple[str, str, str]] = {
    "de_DE": ("+49", "DE", "Universitätsklinikum {city}"),
    "fr_FR": ("+33", "FR", "Centre Hospitalier Universitaire de {city}"),
    "it_IT": ("+39", "IT", "Ospedale San {given} di {city}"),
    "es_ES": ("+34", "ES", "Hospital Universitario de {city}"),
    "nl_NL": ("+31", "NL", "Ziekenhuis {city}"),
    "pl_PL": ("+48", "PL", "Szpital Wojewódzki w {city}"),
    "cs_CZ": ("+420", "CZ", "Fakultní nemocnice {city}"),
    "pt_PT": ("+351", "PT", "Hospital de {city}"),
}

ETHNIC_GROUPS = ("European", "Mediterranean", "Slavic", "Nordic", "Iberian", "Mixed")  # SH: <= 16
OCCUPATIONS = ("Teacher", "Engineer", "Nurse", "Farmer", "Baker", "Retired", "Lawyer", "Driver")
DEPARTMENTS = ("Radiologie", "Radiology", "Imagerie médicale", "Radiologia", "Radiología")


@cache
def _faker(locale: str) -> Faker:
    # Building a Faker costs tens of milliseconds: one per locale per process, reseeded per patient.
    fake = Faker(locale)
    for provider in fake.providers:
        # Faker 37's it_IT builds its city list from a set, so its order (and the city a seed
        # picks) changes with each process's string hash seed; sort it to keep output reproducible.
        cities = getattr(provider, "cities", None)
        if isinstance(cities, list):
            provider.cities = sorted(cities)
    return fake


@dataclass(frozen=True)
class Person:
    """A person's name in DICOM PN component order (family^given^middle^prefix)."""

    family: str
    given: str
    prefix: str = ""

    @property
    def pn(self) -> str:
        """The PN value, without trailing empty components."""
        return f"{self.family}^{self.given}^^{self.prefix}" if self.prefix else f"{self.family}^{self.given}"

    @property
    def display(self) -> str:
        """How the name appears in free text and burned-in annotations."""
        return " ".join(part for part in (self.prefix, self.given, self.family) if part)


@dataclass(frozen=True)
class Patient:
    """Everything identifying about one synthetic patient."""

    index: int
    locale: str
    country: str
    name: Person
    sex: str
    birth_date: date
    birth_time: str
    patient_id: str
    issuer: str
    national_id: str
    national_issuer: str
    previous_id: str
    other_names: tuple[str, ...]
    mother_birth_name: str
    address: str
    phone: str
    ethnic_group: str
    occupation: str
    size_m: str
    weight_kg: str


@dataclass(frozen=True)
class Site:
    """The hospital that imaged the patient and the people who worked on the studies."""

    institution: str
    address: str
    department: str
    city: str
    referring: Person
    performing: Person
    reading: Person
    operator: Person
    verifier: Person


def _person(fake: Faker, rng: random.Random, sex: str, prefix: str = "") -> Person:
    given = fake.first_name_female() if sex == "F" else fake.first_name_male()
    family = fake.last_name()
    # About one name in five is double-barrelled, as in real registries.
    if rng.random() < 0.2:
        family = f"{family}-{fake.last_name()}"
    return Person(family=family, given=given, prefix=prefix)


def _phone(rng: random.Random, country_code: str) -> str:
    # PatientTelephoneNumbers is SH (16 characters at most), so build a short number.
    digits = "".join(str(rng.randrange(10)) for _ in range(14 - len(country_code)))
    return f"{country_code} {digits}"


def _address(fake: Faker) -> str:
    # One line, within LO's 64 characters.
    return f"{fake.street_address()}, {fake.postcode()} {fake.city()}".replace("\n", " ")[:64]


def make_patient(rng: random.Random, index: int, first_study: date) -> tuple[Patient, Site]:
    """Invent one patient (aged 25 to 89 at ``first_study``) and the site that imaged them."""
    locale = rng.choice(sorted(LOCALES))
    country_code, country, pattern = LOCALES[locale]
    fake = _faker(locale)
    fake.seed_instance(rng.getrandbits(64))
    sex = rng.choice("FM")
    name = _person(fake, rng, sex)
    birth_date = first_study - timedelta(days=rng.randrange(25 * 365, 89 * 365))
    city = fake.city()
    institution = pattern.format(city=city, given=fake.first_name_male())[:64]
    patient = Patient(
        index=index,
        locale=locale,
        country=country,
        name=name,
        sex=sex,
        birth_date=birth_date,
        birth_time=f"{rng.randrange(24):02d}{rng.randrange(60):02d}00",
        patient_id=f"{country}{rng.randrange(10**9):09d}",
        issuer=institution,
        national_id=f"{rng.randrange(10**11):011d}",
        national_issuer=f"National Registry {country}",
        previous_id=f"OLD-{rng.randrange(10**7):07d}",
        # A maiden name or an earlier spelling: real Other Patient Names look like this.
        other_names=(f"{fake.last_name()}^{name.given}",),
        mother_birth_name=f"{fake.last_name()}^{fake.first_name_female()}",
        address=_address(fake),
        phone=_phone(rng, country_code),
        ethnic_group=rng.choice(ETHNIC_GROUPS),
        occupation=rng.choice(OCCUPATIONS),
        size_m=f"{rng.uniform(1.50, 1.95):.2f}",
        weight_kg=str(rng.randrange(48, 120)),
    )
    site = Site(
        institution=institution,
        address=_address(fake),
        department=rng.choice(DEPARTMENTS),
        city=city,
        referring=_person(fake, rng, rng.choice("FM"), "Dr."),
        performing=_person(fake, rng, rng.choice("FM")),
        reading=_person(fake, rng, rng.choice("FM"), "Dr."),
        operator=_person(fake, rng, rng.choice("FM")),
        verifier=_person(fake, rng, rng.choice("FM"), "Prof."),
    )
    return patient, site


def age_at(birth: date, when: date) -> str:
    """The DICOM AS value (e.g. ``063Y``) of someone born on ``birth``, on the day ``when``."""
    years = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def da(value: date) -> str:
    """A DICOM DA string (YYYYMMDD)."""
    return value.strftime("%Y%m%d")
