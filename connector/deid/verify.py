"""Leak verification: scan a written instance for every identifying value of its original.

The scan covers the whole encoded file (every element, nested and private, file meta included)
except the pixel data, whose bytes would match short strings by chance; burned-in text is the
pixel cleaner's job. A value deliberately retained by an option is not a leak. Reasons name the
attribute the value came from, never the value.
"""

from __future__ import annotations

import re

_PIXEL_DATA_TAG = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


def header_bytes(encoded: bytes) -> bytes:
    """The encoded instance up to its (last) Pixel Data element."""
    cut = max(encoded.rfind(tag) for tag in _PIXEL_DATA_TAG)
    return encoded if cut < 0 else encoded[:cut]


# Values that name or number a person or an encounter: a leak wherever they reappear, even as the
# whole value of an attribute that is otherwise safe.
STRONG_IDENTIFIERS = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "PatientName",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "AccessionNumber",
        "StudyID",
        "AdmissionID",
        "MedicalRecordLocator",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "OperatorsName",
        "PhysiciansOfRecord",
        "PersonName",
        "IssuerOfPatientID",
        "PatientBirthDate",
    }
)


def _within(value: bytes, safe_values: frozenset[bytes] | set[bytes]) -> bool:
    return any(value in safe for safe in safe_values)


def find_leaks(
    encoded: bytes,
    identifying: dict[bytes, str],
    kept: set[bytes],
    safe_values: frozenset[bytes] | set[bytes] = frozenset(),
) -> list[str]:
    """Attributes whose original value appears in `encoded`, sorted; empty when clean.

    A value found inside the value of a safe attribute (an institution named like the scanner's
    manufacturer) is that attribute's own business, unless it names or numbers a person.
    """
    candidates = [
        value
        for value, origin in identifying.items()
        if value not in kept and not (origin not in STRONG_IDENTIFIERS and _within(value, safe_values))
    ]
    if not candidates:
        return []
    haystack = header_bytes(encoded)
    pattern = re.compile(b"|".join(re.escape(value) for value in sorted(candidates, key=len, reverse=True)))
    found = {identifying[match.group(0)] for match in pattern.finditer(haystack)}
    return sorted(found)
