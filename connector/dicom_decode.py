"""Read DICOM without pydicom's per-element overhead, into exactly the objects pydicom builds.

pydicom reads through a general machinery (a file-like object, a generator, hooks, one full
`Dataset()` per sequence item) that costs more than everything else a de-identification does
with a small instance. For the common case (explicit VR little endian, known VRs, defined
lengths, everything inside the file) this module parses the bytes itself and assembles the same
datasets of `RawDataElement`s, with the same attributes, as pydicom would; anything else is left
to pydicom, which then reads, warns and fails exactly as it always does.

- `read_file`: `dcmread(path)`.
- `sequence_value`: `ds[tag].value` for a sequence element, as `Dataset.__getitem__` decodes it.
- `raw_items`: the undecoded elements of a sequence's items, for a sequence that is only read.
- `peek`: an element's value without decoding the element in place, so that the fast encoder
  copies it byte for byte instead of encoding a decoded value again.

tests/test_deid_fast_paths.py holds the results equal to pydicom's on the synthetic cohort and on
pydicom's bundled test files.
"""

from __future__ import annotations

import os
import struct
from collections.abc import MutableSequence
from typing import Any, cast

from pydicom import config, dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.config import logger
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_16, EXPLICIT_VR_LENGTH_32

_VRS = {str(vr).encode("ascii"): str(vr) for vr in EXPLICIT_VR_LENGTH_16 | EXPLICIT_VR_LENGTH_32}
_LONG_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_ELEMENT = struct.Struct("<HH2sH").unpack_from
_ITEM = struct.Struct("<HHL").unpack_from
_UL = struct.Struct("<L").unpack_from
_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005


_Elements = dict[BaseTag, DataElement | RawDataElement]


def _empty_raw(vr: str) -> bytes | None:
    """`empty_value_for_VR(vr, raw=True)`, which pydicom's annotations do not narrow to raw values."""
    return cast("bytes | None", empty_value_for_VR(vr, raw=True))


def _state_template() -> dict[str, Any]:
    """The attributes `Dataset()` gives a new dataset; containers are copied for each item."""
    return dict(vars(Dataset()))


_TEMPLATE = _state_template()
# The containers among them, which each item gets a copy of.
_CONTAINERS = tuple((name, value) for name, value in _TEMPLATE.items() if isinstance(value, dict | list))


_PEEKED: dict[tuple[int, str, bool, bytes, str], Any] = {}
_PEEK_CACHE_SIZE = 4096
_DECODE_IN_PLACE = frozenset({None, "SQ", "UN"})
_PEEK_CACHE_VALUE = 64  # bytes: identifiers, codes and numbers, never pixel data or prose


def peek(ds: Dataset, tag: int, default: Any = None) -> Any:
    """`ds[tag].value`, or `default` when absent, leaving the element as it is stored.

    The value is pydicom's own decoding of the element; where that would change the element
    itself (an ambiguous VR to correct, a deferred value to read) pydicom's `ds[tag]` is used.
    """
    element = ds._dict.get(tag)  # type: ignore[call-overload]  # pydicom types the keys BaseTag, not int
    if element is None:
        return default
    if not isinstance(element, RawDataElement):
        return element.value
    raw = element.value
    if raw is None or element.VR in _DECODE_IN_PLACE or element.VR in AMBIGUOUS_VR:
        # pydicom's own path: deferred values, sequences, and elements whose VR decoding settles
        # (implicit VR, UN with a known VR), which are then written with the settled VR.
        return ds[tag].value
    # As Dataset.__getitem__ decodes: the character set itself in the default one.
    encoding = default_encoding if tag == _CHARSET else ds.original_character_set or ds._character_set
    # Short values repeat across the files of a series (UIDs of the study, modality, sizes).
    key = None
    if len(raw) <= _PEEK_CACHE_VALUE and isinstance(encoding, str | list):
        charset = encoding if isinstance(encoding, str) else "\\".join(encoding)
        key = (tag, str(element.VR), element.is_little_endian, raw, charset)
        if key in _PEEKED:
            return _PEEKED[key]
    decoded = convert_raw_data_element(element, encoding=encoding, ds=ds)
    if decoded.VR in AMBIGUOUS_VR:
        return ds[tag].value
    value = decoded.value
    if key is not None and (value is None or type(value) in (str, int, float) or isinstance(value, str)):
        if len(_PEEKED) >= _PEEK_CACHE_SIZE:
            _PEEKED.clear()
        _PEEKED[key] = value  # immutable values only: callers may keep them
    return value


def read_file(path: str | os.PathLike[str]) -> FileDataset:
    """`dcmread(path)`: the same dataset, parsed here when the file is plain.

    A plain file has the DICM prefix, a file meta group and a dataset in explicit VR little endian,
    no command set, and known VRs and defined lengths throughout, all inside the file; they are
    parsed here and assembled as dcmread assembles them. Anything else (a truncated file, an
    undefined length, another transfer syntax) is read by dcmread, with its warnings.
    """
    with open(path, "rb") as fp:
        data = fp.read()
        parsed = _plain_file(data)
        if parsed is None:
            fp.seek(0)
            return dcmread(fp)
        file_meta, elements = parsed
        # What read_dataset, then read_partial, make of the elements.
        # Dataset adopts the dict as its _dict, which later holds decoded elements too.
        dataset = Dataset(cast(_Elements, elements), parent_encoding=default_encoding)
        encoding: str | MutableSequence[str] = default_encoding
        if _CHARSET in elements:
            charset = convert_raw_data_element(elements[BaseTag(_CHARSET)]).value
            encoding = convert_encodings(charset)
        dataset.set_original_encoding(False, True, encoding)
        ds = FileDataset(fp, dataset, data[:128], file_meta, False, True)
        ds.set_original_encoding(False, True, dataset._character_set)
        return ds


def _plain_file(data: bytes) -> tuple[FileMetaDataset, dict[BaseTag, RawDataElement]] | None:
    if len(data) < 140 or data[128:132] != b"DICM":
        return None
    found = _meta_elements(data, 132)
    if found is None:
        return None
    meta_elements, start = found
    file_meta = _file_meta(meta_elements, 132, start)
    end = len(data)
    if (
        file_meta is None
        or start + 8 > end
        or data[start : start + 2] == b"\x00\x00"  # a command set (group 0000): dcmread reads it
        or not _explicit_little(file_meta.get("TransferSyntaxUID"))
    ):
        return None
    elements = _elements(data, start, end, top_level=True)
    return None if elements is None else (file_meta, elements)


def _meta_elements(data: bytes, position: int) -> tuple[dict[BaseTag, RawDataElement], int] | None:
    """The file meta group's raw elements and where the dataset starts; None: pydicom reads it."""
    end = len(data)
    elements: dict[BaseTag, RawDataElement] = {}
    while position + 8 <= end:
        group, number, vr_bytes, length = _ELEMENT(data, position)
        if group != 2:
            return elements, position  # read_dataset's stop_when: the next group starts here
        vr = _VRS.get(vr_bytes)
        if vr is None:
            return None
        header = 12 if vr in _LONG_VRS else 8
        if header == 12:
            if position + 12 > end:
                return None
            length = _UL(data, position + 8)[0]
        start = position + header
        if length == _UNDEFINED or start + length > end:
            return None
        key = BaseTag(group << 16 | number)
        value = data[start : start + length] if length else _empty_raw(vr)
        elements[key] = RawDataElement(key, vr, length, value, start, False, True)
        position = start + length
    return None  # a file that ends in its meta group: dcmread decides


def _file_meta(elements: dict[BaseTag, RawDataElement], start: int, end: int) -> FileMetaDataset | None:
    """The file meta dataset as _read_file_meta_info builds it from `elements` (between `start` and
    `end` in the file), down to the elements it decodes on the way; None: pydicom reads it."""
    raw = Dataset(cast(_Elements, elements), parent_encoding=default_encoding)
    raw.set_original_encoding(False, True, default_encoding)
    file_meta = FileMetaDataset(raw)
    file_meta.set_original_encoding(False, True, default_encoding)
    if not file_meta._dict:
        return file_meta
    try:
        fetched = list(file_meta.elements())  # every element, as pydicom's own check fetches them
        file_meta[fetched[0].tag]
    except NotImplementedError:
        return None  # pydicom retries the group as implicit VR
    if 0x00020000 in file_meta._dict:
        length = file_meta[0x00020000].value
        if length != end - (start + 12):
            logger.info(
                "_read_file_meta_info: (0002,0000) 'File Meta Information Group Length' value "
                f"doesn't match the actual File Meta Information length ({length} vs "
                f"{end - (start + 12)} bytes)"
            )
    return file_meta


def _explicit_little(syntax: object) -> bool:
    """Whether read_partial reads a dataset of this transfer syntax as explicit VR little endian."""
    if syntax is None or syntax in _NOT_EXPLICIT_LITTLE:
        return False
    return syntax not in PrivateTransferSyntaxes


_NOT_EXPLICIT_LITTLE = (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


def sequence_value(ds: Dataset, tag: int) -> Sequence:
    """`ds[tag].value` for a sequence element, decoding it here when it is still raw and plain."""
    element = ds._dict.get(tag)  # type: ignore[call-overload]  # pydicom types the keys BaseTag, not int
    if isinstance(element, RawDataElement) and _decodable(element):
        # _decodable checked that the value is bytes.
        data = cast(bytes, element.value)
        items = _items(data, element.value_tell, ds.original_character_set or ds._character_set)
        if items is not None:
            sequence = Sequence(items)
            sequence.is_undefined_length = False
            decoded = DataElement(
                element.tag, "SQ", sequence, element.value_tell, False, already_converted=True
            )
            if element.tag.is_private:
                ds[tag] = decoded  # Dataset.__setitem__ also notes the element's private creator
            else:
                # What Dataset.__setitem__ does for a standard sequence element.
                ds._dict[element.tag] = decoded
                ds._set_pixel_representation(decoded)
            return sequence
    value: Sequence = ds[tag].value
    return value


def raw_items(ds: Dataset, tag: int) -> list[dict[BaseTag, RawDataElement]] | None:
    """The undecoded elements of each item of a still raw, plain sequence element, without
    building datasets (for a sequence that is only read, then removed); None if it is not one."""
    element = ds._dict.get(tag)  # type: ignore[call-overload]  # pydicom types the keys BaseTag, not int
    if not isinstance(element, RawDataElement) or not _decodable(element):
        return None
    return _raw_items(cast(bytes, element.value))  # _decodable checked that the value is bytes


def nested_raw_items(element: RawDataElement) -> list[dict[BaseTag, RawDataElement]] | None:
    """`raw_items` for a sequence element inside an item that `raw_items` returned."""
    return _raw_items(cast(bytes, element.value)) if _decodable(element) else None


def _raw_items(data: bytes) -> list[dict[BaseTag, RawDataElement]] | None:
    items = _item_elements(data)
    return None if items is None else [elements for _, elements in items]


def _item_elements(data: bytes) -> list[tuple[int, dict[BaseTag, RawDataElement]]] | None:
    """Where each item of a defined-length sequence value starts, and its raw elements."""
    items = []
    position, end = 0, len(data)
    while position < end:
        if position + 8 > end:
            return None
        group, element, length = _ITEM(data, position)
        start = position + 8
        if group != 0xFFFE or element != 0xE000 or length == _UNDEFINED or start + length > end:
            return None
        elements = _elements(data, start, start + length)
        if elements is None:
            return None
        items.append((position, elements))
        position = start + length
    return items


def _decodable(element: RawDataElement) -> bool:
    return (
        element.VR == "SQ"
        and type(element.value) is bytes
        and 0 < element.length != _UNDEFINED
        and len(element.value) == element.length
        and not element.is_implicit_VR
        and element.is_little_endian
        and config.data_element_callback is None
        and not hooks.raw_element_kwargs
        and hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
    )


def _items(data: bytes, offset: int, encoding: str | MutableSequence[str]) -> list[Dataset] | None:
    """The items of a defined-length sequence value, as read_sequence builds them; None: pydicom."""
    # convert_SQ's default, then read_sequence_item's bookkeeping, with positions in the file.
    encoding = encoding or [default_encoding]
    if isinstance(encoding, str):
        encoding = [encoding]
    found = _item_elements(data)
    if found is None:
        return None
    items = []
    for position, elements in found:
        item = Dataset.__new__(Dataset)
        state = item.__dict__
        state.update(_TEMPLATE)
        for name, value in _CONTAINERS:
            state[name] = value.copy()
        state["_dict"] = elements
        state["_parent_encoding"] = encoding
        state["_read_implicit"], state["_read_little"], state["_read_charset"] = False, True, encoding
        state["is_undefined_length_sequence_item"] = False
        state["seq_item_tell"] = state["file_tell"] = position + offset
        items.append(item)
    return items


def _elements(
    data: bytes, position: int, end: int, top_level: bool = False
) -> dict[BaseTag, RawDataElement] | None:
    """The raw elements between `position` and `end` of one item (or of a file's whole dataset),
    as data_element_generator yields them; None: pydicom."""
    elements: dict[BaseTag, RawDataElement] = {}
    while position < end:
        if position + 8 > end:
            return None
        group, number, vr_bytes, length = _ELEMENT(data, position)
        vr = _VRS.get(vr_bytes)
        if vr is None:
            return None  # an unknown VR or an implicit VR item: pydicom decides
        position += 8
        if vr in _LONG_VRS:
            if position + 4 > end:
                return None
            length = _UL(data, position)[0]
            position += 4
        tag = group << 16 | number
        if length == _UNDEFINED or position + length > end or group == 0xFFFE:
            return None
        if tag == _CHARSET and not top_level:
            return None  # an item with its own character set: pydicom decodes it
        value = data[position : position + length] if length else _empty_raw(vr)
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr, length, value, position, False, True)
        position += length
    return elements
