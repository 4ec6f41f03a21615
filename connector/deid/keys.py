"""Keyed, deterministic replacements under a per-dataset secret: pseudonyms, UIDs, date offsets.

HMAC-SHA256 under the dataset's secret: the same patient or UID maps to the same value in every
file and run of one dataset, and values of two datasets cannot be linked without both secrets.
The secret never leaves this object; nothing here can map a pseudonym back to a patient.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache

# Dates move back by 1..3650 days: far enough to hide the real day, intervals unchanged.
MAX_SHIFT_DAYS = 3650


def patient_key(patient_id: str, issuer: str = "") -> str:
    """How a patient is keyed: the issuer-qualified hospital ID (`IssuerOfPatientID|PatientID`)."""
    return f"{issuer.strip()}|{patient_id.strip()}"


@dataclass(frozen=True)
class DatasetKeys:
    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < 32:
            raise ValueError("a dataset secret must have at least 256 bits")

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def pseudonym(self, patient_key: str) -> str:
        """`PSN-` and 16 base32 characters (80 bits): no collisions in any realistic cohort."""
        return "PSN-" + base64.b32encode(self._mac("patient", patient_key)[:10]).decode("ascii")

    def uid(self, original: str) -> str:
        """A `2.25.` UID (PS3.5 B.2) from 128 bits of the keyed hash: at most 44 characters."""
        return _uid(self.secret, original)

    def date_offset_days(self, patient_key: str) -> int:
        return 1 + int.from_bytes(self._mac("date-shift", patient_key)[:4], "big") % MAX_SHIFT_DAYS


@lru_cache(maxsize=65536)
def _uid(secret: bytes, original: str) -> str:
    # Cached: a series' UIDs repeat in every one of its files.
    digest = hmac.new(secret, f"uid\x00{original}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))
