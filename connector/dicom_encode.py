"""Encode a dataset as a DICOM Part 10 file, fast where it can be and through pydicom otherwise.

Elements that were never decoded are copied byte for byte with a hand-packed header (explicit
VR little endian, defined length): that is all pydicom's writer does for them too, minus its
per-element overhead, and it is what most of a de-identified instance is. Everything else
(decoded or new elements, sequences, undefined lengths, other transfer syntaxes) goes through
pydicom. The output is byte-identical to `dcmwrite(..., enforce_file_format=True)`; a test
holds it to that.
"""

from __future__ import annotations

import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_file_meta_info
from pydicom.uid import UID

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_SHORT_VRS = frozenset(
    {
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "PN",
        "SH",
        "SL",
        "SS",
        "ST",
        "SV",
        "TM",
        "UI",
        "UL",
        "US",
        "UV",
    }
)
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sHI")


def _fast_path_applies(ds: Dataset, syntax: UID) -> bool:
    return (
        syntax.is_little_endian
        and not syntax.is_implicit_VR
        and not syntax.is_deflated
        and ds.original_encoding in ((False, True), (None, None))
    )


def encode_file(ds: Dataset) -> bytes:
    """`ds` with its file meta as the bytes of a DICOM file (preamble, meta, dataset)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not _fast_path_applies(ds, syntax):
        out = DicomBytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return bytes(out.getvalue())
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write((ds.preamble or b"\x00" * 128) + b"DICM")
    write_file_meta_info(out, ds.file_meta, enforce_standard=True)
    elements = ds._dict
    encodings = ds._character_set
    write = out.write
    for tag in sorted(elements):
        if not tag & 0xFFFF:
            continue  # group lengths: pydicom's writer drops them too (retired outside the file meta)
        element = elements[tag]
        if (
            isinstance(element, RawDataElement)
            # UN and private elements are left to pydicom, which may resolve their VR.
            and not (tag >> 16) & 1
            and (element.VR in _SHORT_VRS or element.VR in _LONG_VRS)
            and element.VR != "UN"
            and element.length != 0xFFFFFFFF
            and not element.is_implicit_VR
            and element.is_little_endian
        ):
            value = element.value or b""
            t = int(tag)
            vr = element.VR
            if vr in _LONG_VRS:
                write(_LONG.pack(t >> 16, t & 0xFFFF, vr.encode("ascii"), 0, len(value)))
            else:
                write(_SHORT.pack(t >> 16, t & 0xFFFF, vr.encode("ascii"), len(value)))
            write(value)
        else:
            write_data_element(out, ds.get_item(tag), encodings)
    return bytes(out.getvalue())
