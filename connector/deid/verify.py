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


def find_leaks(encoded: bytes, identifying: dict[bytes, str], kept: set[bytes]) -> list[str]:
    """Attributes whose original value appears in `encoded`, sorted; empty when clean."""
    candidates = [value for value in identifying if value not in kept]
    if not candidates:
        return []
    haystack = header_bytes(encoded)
    pattern = re.compile(b"|".join(re.escape(value) for value in sorted(candidates, key=len, reverse=True)))
    found = {identifying[match.group(0)] for match in pattern.finditer(haystack)}
    return sorted(found)
