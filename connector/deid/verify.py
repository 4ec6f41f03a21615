"""Leak verification: scan a written instance for every identifying value of its original.

The scan covers the whole encoded file (every element, nested and private, file meta included)
except the pixel data, whose bytes would match short strings by chance; burned-in text is the
pixel cleaner's job. A value deliberately retained by an option is not a leak. Reasons name the
attribute the value came from, never the value.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _within(value: bytes, safe_raw: Sequence[bytes]) -> bool:
    return any(value in safe for safe in safe_raw)


def find_leaks(
    encoded: bytes, identifying: dict[bytes, str], kept: set[bytes], safe_raw: Sequence[bytes] = ()
) -> list[str]:
    """Attributes whose original value appears in `encoded`, sorted; empty when clean.

    A value found inside the value of a safe attribute (an institution named like the scanner's
    manufacturer) is that attribute's own business, unless it names or numbers a person.
    """
    haystack = header_bytes(encoded)
    found = [value for value in identifying if value not in kept and _occurs(value, haystack)]
    # The exemption is checked only for the rare hit, not for every value of every instance.
    return sorted(
        {
            identifying[value]
            for value in found
            if identifying[value] in STRONG_IDENTIFIERS or not _within(value, safe_raw)
        }
    )


def _occurs(value: bytes, haystack: bytes) -> bool:
    """Whether `value` is in `haystack`; a number only as a whole number, not inside a longer one
    (a birth time of 053400 is no leak inside a random 2.25 UID)."""
    if not value.isdigit():
        return value in haystack
    start = haystack.find(value)
    while start >= 0:
        before = haystack[start - 1 : start]
        after = haystack[start + len(value) : start + len(value) + 1]
        if not (before.isdigit() or before == b".") and not (after.isdigit() or after == b"."):
            return True
        start = haystack.find(value, start + 1)
    return False
