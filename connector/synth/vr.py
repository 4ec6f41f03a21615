"""Value length limits of DICOM value representations (PS3.5 Table 6.2-1), in UTF-8 bytes.

The standard counts characters, but validators such as dciodvfy count bytes in the declared
character set (ISO_IR 192, UTF-8); cutting to the byte limit satisfies both. This module never
cuts a multi-byte character in half.
"""

from __future__ import annotations

MAX_BYTES: dict[str, int] = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}


def fit(value: str, vr: str) -> str:
    """``value`` cut to the longest prefix whose UTF-8 encoding fits the VR's maximum length."""
    limit = MAX_BYTES.get(vr)
    encoded = value.encode("utf-8")
    if limit is None or len(encoded) <= limit:
        return value
    # errors="ignore" drops the partial character left at the cut.
    return encoded[:limit].decode("utf-8", errors="ignore").rstrip()
