"""Encode a dataset as a DICOM Part 10 file, fast where it can be and through pydicom otherwise.

For explicit VR little endian the file meta, the dataset and every sequence item are encoded
here: undecoded elements are copied byte for byte behind a hand-packed header, and decoded
elements with plain values (ASCII text, integers, bytes, sequences) are encoded as pydicom's
writers would encode them, minus their per-element overhead. Anything else (person names,
decimal strings, non-ASCII text, undefined lengths other than sequences', datasets pydicom would
re-decode before writing, other transfer syntaxes) is handed to pydicom, element by element or
item by item. For a dataset whose file meta agrees with it (as dicom_meta builds it), the output is
byte-identical to `dcmwrite(..., enforce_file_format=True)`; a test holds it to that.

`as_raw` turns a decoded element into the undecoded one holding those same bytes, for elements
that are written unchanged into many files (the de-identification markers).
"""

from __future__ import annotations

import string
import struct
from collections.abc import MutableSequence
from functools import lru_cache
from typing import Any

from pydicom.charset import convert_encodings, custom_encoders, default_encoding, encode_string
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_data_element, write_dataset, write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_SHORT_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_16)
_VR_BYTES = {vr: vr.encode("ascii") for vr in _LONG_VRS | _SHORT_VRS}
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<HH2sHI")
_ITEM = struct.Struct("<HHI")
_UNDEFINED = 0xFFFFFFFF
# Keys for Dataset._dict, which pydicom types as BaseTag.
_PIXEL_DATA_TAG = BaseTag(0x7FE00010)
_CHARSET_TAG = BaseTag(0x00080005)
_ITEM_TAG = (0xFFFE, 0xE000)
_ITEM_END = _ITEM.pack(0xFFFE, 0xE00D, 0)
_SEQUENCE_END = _ITEM.pack(0xFFFE, 0xE0DD, 0)

# pydicom's writers by VR, for values of the plain kinds (see encoded_value).
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"})  # written as ISO 8859-1
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})  # written in the dataset's character set
_INTEGER_FORMATS = {"US": "H", "UL": "L", "SL": "l", "SS": "h", "UV": "Q", "SV": "q"}
_FLOAT_FORMATS = {"FL": "f", "FD": "d"}
_PADDED_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})

Chunks = list[bytes]


def encode_file(ds: Dataset) -> bytes:
    """`ds` with its file meta as the bytes of a DICOM file (preamble, meta, dataset)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_little_endian or syntax.is_implicit_VR or syntax.is_deflated:
        out = DicomBytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return bytes(out.getvalue())
    pixels = ds._dict.get(_PIXEL_DATA_TAG)
    if pixels is not None and (
        syntax.is_compressed or not isinstance(pixels, RawDataElement) or _pixel_data(pixels) is None
    ):
        # What dcmwrite does to Pixel Data: decode it, with an undefined length if encapsulated.
        ds[0x7FE00010].is_undefined_length = syntax.is_compressed
    chunks: Chunks = [(ds.preamble or b"\x00" * 128) + b"DICM", _file_meta(ds.file_meta)]
    # dcmwrite starts the dataset from pydicom's default character set, like any root dataset.
    _dataset(ds, default_encoding, chunks, root=True)
    return b"".join(chunks)


def writes_ascii_as_is(ds: Dataset) -> bool:
    """Whether `encode_file` writes `ds` as explicit VR little endian with ASCII text as ASCII bytes:
    then an element from `as_raw` is written exactly as the decoded element it stands for."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not syntax.is_little_endian or syntax.is_implicit_VR or syntax.is_deflated:
        return False
    charset = ds._dict.get(_CHARSET_TAG)
    encoding = ds[0x00080005].value if charset is not None else default_encoding
    return _ascii_as_is(tuple(_python_encodings(encoding or default_encoding)))


def as_raw(element: DataElement) -> RawDataElement | None:
    """A decoded element of ASCII text, integers or a sequence of them as the undecoded explicit VR
    little endian element holding the bytes this module writes for it (see writes_ascii_as_is).

    Built once, such an element is immutable and can be shared by any number of datasets.
    """
    chunks: Chunks = []
    if element.VR == "SQ" and not element.is_undefined_length:
        _sequence(element, [default_encoding], chunks)
    else:
        data = _element_bytes(element, [default_encoding])
        if data is None:
            return None
        chunks.append(data)
    encoded = b"".join(chunks)
    value = encoded[12:] if element.VR in _LONG_VRS else encoded[8:]
    return RawDataElement(element.tag, element.VR, len(value), value, 0, False, True)


def _file_meta(meta: FileMetaDataset) -> bytes:
    """The File Meta Information group as write_file_meta_info writes it (group length first)."""
    validate_file_meta(meta, enforce_standard=True)  # adds the version and implementation UID if missing
    chunks: Chunks = []
    elements = meta._dict
    for tag in sorted(elements, key=int):
        if tag == 0x00020000:
            continue  # recomputed below
        element = elements[tag]
        data = None if isinstance(element, RawDataElement) else _element_bytes(element, [default_encoding])
        if data is None:  # anything unusual in the meta: pydicom's own writer, from the start
            out = DicomBytesIO()
            write_file_meta_info(out, meta, enforce_standard=True)
            return bytes(out.getvalue())
        chunks.append(data)
    body = b"".join(chunks)
    return _SHORT.pack(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", len(body)) + body


def _dataset(ds: Dataset, parent_encoding: str | list[str], chunks: Chunks, root: bool = False) -> None:
    """Append the encoded elements of `ds` (no item header) to `chunks`, as write_dataset would."""
    if not _writes_as_is(ds):
        # pydicom decodes and re-encodes this dataset's elements first: let it do all of it.
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, False
        write_dataset(out, ds, parent_encoding)
        chunks.append(bytes(out.getvalue()))
        return
    elements = ds._dict
    charset = elements.get(_CHARSET_TAG)
    # What write_dataset passes on: the dataset's own Specific Character Set, else its parent's.
    encoding = ds[0x00080005].value if charset is not None else parent_encoding
    encodings = _python_encodings(encoding)
    append = chunks.append
    for tag in sorted(elements, key=int):
        if not tag & 0xFFFF and tag >> 16 > 6:
            continue  # group lengths: pydicom's writer drops them too (retired outside the file meta)
        element = elements[tag]
        data = None
        if type(element) is RawDataElement:
            value, vr = element.value, element.VR
            # The common case inline (most of an instance): an undecoded element copied as it is.
            if (
                type(value) is bytes
                and vr in _VR_BYTES
                and element.length != _UNDEFINED
                and not element.is_implicit_VR
                and element.is_little_endian
                and not (root and tag == 0x7FE00010)
            ):
                length = len(value)
                if vr in _LONG_VRS:
                    append(_LONG.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], 0, length))
                    append(value)
                    continue
                if length <= 0xFFFF:
                    append(_SHORT.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], length))
                    append(value)
                    continue
            if value is None:
                element = ds[tag]  # what get_item does to empty or deferred values before writing
        if isinstance(element, RawDataElement):
            # Native Pixel Data (encapsulated was decoded above): an even, defined length.
            data = _pixel_data(element) if root and tag == 0x7FE00010 else _raw_bytes(element)
        if data is None and isinstance(element, DataElement):
            if element.VR == "SQ" and not element.is_buffered:
                _sequence(element, encodings, chunks)
                continue
            data = _element_bytes(element, encodings)
        if data is None:
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, False
            write_data_element(out, element, encoding)
            data = bytes(out.getvalue())
        append(data)


def _writes_as_is(ds: Dataset) -> bool:
    """Whether write_dataset writes `ds` element by element as it is (explicit VR little endian).

    pydicom re-decodes every element first (and corrects ambiguous VRs) when the dataset was read
    with another encoding or character set, or built in memory; for a dataset built in memory
    that holds no undecoded element and no ambiguous VR anywhere, that changes nothing.
    """
    if ds.original_encoding == (False, True):
        return bool(ds.original_character_set == ds._character_set)
    return _decoded_and_unambiguous(ds)


def _decoded_and_unambiguous(ds: Dataset) -> bool:
    for element in ds._dict.values():
        if isinstance(element, RawDataElement) or element.VR in AMBIGUOUS_VR:
            return False
        if element.VR == "SQ" and not all(_decoded_and_unambiguous(item) for item in element.value or ()):
            return False
    return True


def _sequence(element: DataElement, encodings: list[str], chunks: Chunks) -> None:
    """A sequence as write_data_element and write_sequence_item write it."""
    body: Chunks = []
    for item in element.value or ():
        content: Chunks = []
        # write_sequence hands each item the parent's converted character set.
        _dataset(item, encodings, content)
        if getattr(item, "is_undefined_length_sequence_item", False):
            body.append(_ITEM.pack(*_ITEM_TAG, _UNDEFINED))
            body.extend(content)
            body.append(_ITEM_END)
        else:
            body.append(_ITEM.pack(*_ITEM_TAG, sum(map(len, content))))
            body.extend(content)
    tag = int(element.tag)
    if element.is_undefined_length:
        chunks.append(_LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, _UNDEFINED))
        chunks.extend(body)
        chunks.append(_SEQUENCE_END)
    else:
        chunks.append(_LONG.pack(tag >> 16, tag & 0xFFFF, b"SQ", 0, sum(map(len, body))))
        chunks.extend(body)


def _raw_bytes(element: RawDataElement) -> bytes | None:
    """An undecoded explicit VR little endian element, header and value, or None for pydicom."""
    value = element.value
    vr = element.VR
    if (
        type(value) is not bytes
        or vr not in _VR_BYTES
        or element.length == _UNDEFINED
        or element.is_implicit_VR
        or not element.is_little_endian
    ):
        return None
    if len(value) > 0xFFFF and vr not in _LONG_VRS:
        return None
    return _header(int(element.tag), vr, len(value)) + value


def _pixel_data(element: RawDataElement) -> bytes | None:
    """Native Pixel Data: dcmwrite decodes it and writes it with a defined, even length."""
    value = element.value
    if type(value) is not bytes or element.VR not in _PADDED_BYTES_VRS or element.is_implicit_VR:
        return None
    if len(value) % 2:
        value += b"\x00"
    return _header(0x7FE00010, element.VR, len(value)) + value


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _LONG.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], 0, length)
    return _SHORT.pack(tag >> 16, tag & 0xFFFF, _VR_BYTES[vr], length)


def _element_bytes(element: DataElement, encodings: list[str]) -> bytes | None:
    """A decoded element, header and value, as write_data_element writes it; None for pydicom."""
    vr = element.VR
    if vr not in _VR_BYTES or element.is_undefined_length or element.is_buffered:
        return None
    data = b"" if element.is_empty else encoded_value(vr, element.value, encodings)
    if data is None or (len(data) > 0xFFFF and vr not in _LONG_VRS):
        return None  # pydicom writes an over-long short-VR value as UN, with a warning
    return _header(int(element.tag), vr, len(data)) + data


def encoded_value(vr: str, value: Any, encodings: list[str]) -> bytes | None:
    """A decoded value of a plain kind as pydicom's writer for `vr` encodes it (padded to even
    length), in a dataset whose Python character encodings are `encodings`; None for any other."""
    if value is None or (isinstance(value, str | bytes | list | tuple | MultiValue) and not value):
        return b""  # an empty value: pydicom writes no bytes
    if vr in _STRING_VRS or vr in _TEXT_VRS:
        text = _joined_text(value)
        if text is None or not text.isascii():
            return None
        if vr in _TEXT_VRS and not _ascii_as_is(tuple(encodings)):
            return None
        data = text.encode("ascii")
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        return data
    fmt = _INTEGER_FORMATS.get(vr)
    if fmt is not None:
        return _packed(fmt, value, int, vr == "SS")
    fmt = _FLOAT_FORMATS.get(vr)
    if fmt is not None:
        return _packed(fmt, value, float, False)
    if type(value) is bytes:
        if vr in _PADDED_BYTES_VRS and len(value) % 2:
            return value + b"\x00"
        return value if vr in _PADDED_BYTES_VRS or vr == "UN" else None
    return None


def _joined_text(value: Any) -> str | None:
    """A str or a list of str as the writers join them; None for any other kind of value."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | MultiValue) and all(isinstance(part, str) for part in value):
        return "\\".join(value)
    return None


def _packed(fmt: str, value: Any, kind: type, lut_sensitive: bool) -> bytes | None:
    kinds = (int,) if kind is int else (int, float)
    try:
        if type(value) in kinds:
            return struct.pack("<" + fmt, value)
        # Multi-valued SS: some LUT descriptors mix US and SS, which only pydicom knows about.
        many = isinstance(value, list | MultiValue) and not lut_sensitive
        if many and all(type(v) in kinds for v in value):
            return struct.pack(f"<{len(value)}{fmt}", *value)
    except struct.error:
        return None  # out of range: pydicom raises its own error
    return None


@lru_cache(maxsize=64)
def _ascii_as_is(encodings: tuple[str, ...]) -> bool:
    """Whether encode_string writes ASCII text as ASCII bytes under these encodings.

    It encodes with the first encoding that can (ASCII text: always the first); ISO 2022 encodings
    with custom encoders or trailing escape sequences are left to pydicom.
    """
    first = encodings[0] if encodings else default_encoding
    if first in custom_encoders or first.startswith("iso2022"):
        return False
    probe = string.printable
    try:
        return encode_string(probe, list(encodings)) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        return False


def _python_encodings(encoding: str | MutableSequence[str]) -> list[str]:
    key = (encoding,) if isinstance(encoding, str) else tuple(encoding)
    return _converted(key)


@lru_cache(maxsize=64)
def _converted(encodings: tuple[str, ...]) -> list[str]:
    return list(convert_encodings(list(encodings)))
