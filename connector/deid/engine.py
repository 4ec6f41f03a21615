"""De-identify one DICOM file: read, check, clean pixels, apply the plan, mark, encode, verify.

Returns the encoded bytes or a refusal with a reason code; it never writes into the output
folder itself (the batch does, atomically) and never puts an original value into a reason.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from connector import __version__
from connector.deid.keys import DatasetKeys
from connector.deid.markers import add_markers
from connector.deid.pixels import PixelCleaningRefused, clean_pixels, may_carry_burned_in_text
from connector.deid.plan import Plan
from connector.deid.transform import DUMMY_TEXT, apply_plan, clean_deferred, new_work
from connector.deid.verify import find_leaks
from connector.dicom_decode import peek, read_file
from connector.dicom_encode import encode_file
from connector.dicom_meta import file_meta_for

IMPLEMENTATION_CLASS_UID = "2.25.181113935498374591925722209873829245310"
IMPLEMENTATION_VERSION = f"IMGCONN_{__version__}"[:16]
# Values our own replacements write: finding them in the output is not a leak.
_OUR_VALUES = {DUMMY_TEXT.encode(), b"19000101", b"000000", b"19000101000000", b"000Y", b"090Y", b"***"}


class Refused(Exception):
    """The instance cannot be de-identified safely; `code` is stable, the message is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Deidentified:
    encoded: bytes
    pseudonym: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    modality: str
    pixel_rule: str | None
    actions: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def relative_path(self) -> str:
        return f"{self.pseudonym}/{self.study_uid}/{self.series_uid}/{self.sop_instance_uid}.dcm"


def read_instance(path: Path) -> Dataset:
    """Read and check one file; Refused with a reason code when it cannot be processed safely."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = read_file(path)  # dcmread's result, faster for plain files
            except InvalidDicomError:
                # No preamble or file meta (old ACR-NEMA style exports): a dataset may still follow.
                ds = dcmread(path, force=True)
                if not str(ds.get("SOPClassUID", "")).strip():
                    raise Refused(
                        "not_dicom", "not a DICOM file (no DICM preamble and no SOP class)"
                    ) from None
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = (
                    ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
                )
    except Refused:
        raise
    except (
        EOFError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        OverflowError,
        AttributeError,
        NotImplementedError,
    ) as exc:
        _check_transfer_syntax(path)  # an unknown transfer syntax is the likelier reason
        raise Refused(
            "unreadable", f"cannot be parsed: truncated or corrupt ({type(exc).__name__})"
        ) from None
    # pydicom reads a file that ends mid-element as far as it goes and only warns.
    if any("Unexpected end of file" in str(warning.message) for warning in caught):
        raise Refused("truncated", "the file ends in the middle of an element (truncated)")
    _check(ds)
    return ds


def _check_transfer_syntax(path: Path) -> None:
    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
        return  # no usable file meta: read_instance decides
    syntax = meta.get("TransferSyntaxUID")
    if syntax is not None and not UID(str(syntax)).is_transfer_syntax:
        raise Refused("unsupported_transfer_syntax", f"unknown transfer syntax {str(syntax)[:64]}")


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
_ROWS, _COLUMNS, _FRAMES, _SAMPLES, _BITS = 0x00280010, 0x00280011, 0x00280008, 0x00280002, 0x00280100
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018


def _check(ds: Dataset) -> None:
    # Values are peeked at, not decoded in place: elements left raw are copied as they are on writing.
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        raise Refused("unsupported_transfer_syntax", "no transfer syntax in the file meta information")
    if not UID(syntax).is_transfer_syntax:
        raise Refused("unsupported_transfer_syntax", f"unknown transfer syntax {str(syntax)[:64]}")
    elements = ds._dict
    has_pixels = any(tag in elements for tag in _PIXEL_TAGS)
    sop_class = str(peek(ds, _SOP_CLASS, ""))
    if not has_pixels and (_ROWS in elements or "Image Storage" in UID(sop_class).name):
        # pydicom stops silently when a file ends between two elements: an image without pixels.
        raise Refused("truncated", "an image instance without pixel data: the file is probably truncated")
    if not str(peek(ds, _SOP_INSTANCE, "")).strip():
        raise Refused("missing_sop_instance_uid", "the instance has no SOP Instance UID")
    if not sop_class.strip():
        raise Refused("missing_sop_class_uid", "the instance has no SOP Class UID")
    if 0x7FE00010 in elements and not UID(syntax).is_compressed:
        expected = _expected_pixel_bytes(ds)
        pixels = len(peek(ds, 0x7FE00010))
        if expected is not None and pixels < expected:
            raise Refused("truncated", f"pixel data holds {pixels} of {expected} bytes (truncated)")


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    try:
        frames = int(peek(ds, _FRAMES, 1) or 1)
        bits = int(_required(ds, _BITS))
        rows, columns = int(_required(ds, _ROWS)), int(_required(ds, _COLUMNS))
        count = rows * columns * int(peek(ds, _SAMPLES, 1) or 1) * frames
    except (AttributeError, TypeError, ValueError):
        return None
    return (count * bits + 7) // 8


def _required(ds: Dataset, tag: int) -> Any:
    """The value of an element that must be there (AttributeError, as `ds.Keyword`, when absent)."""
    if tag not in ds._dict:
        raise AttributeError(f"no element {tag:08X}")
    return peek(ds, tag)


def deidentify(path: Path, plan: Plan, keys: DatasetKeys) -> Deidentified:
    ds = read_instance(path)
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    modality = str(peek(ds, 0x00080060, "") or "")[:16]
    pixel_rule = None
    if may_carry_burned_in_text(ds):
        try:
            pixel_rule = clean_pixels(ds, plan)
        except PixelCleaningRefused as exc:
            raise Refused("burned_in_text", str(exc)) from None
        syntax = UID(ds.file_meta.TransferSyntaxUID)
    work = new_work(ds, plan, keys)
    # The original file meta names the instance too; it is rebuilt below, never copied.
    for value in (
        ds.file_meta.get("MediaStorageSOPInstanceUID"),
        ds.file_meta.get("SourceApplicationEntityTitle"),
    ):
        if value and len(str(value).strip()) >= 3:
            work.identifying.setdefault(str(value).strip().encode(), "FileMetaInformation")
    try:
        apply_plan(ds, work)
        clean_deferred(work)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, NotImplementedError) as exc:
        # A value that cannot be decoded is a corrupt element: nothing of the instance is written.
        raise Refused("unreadable", f"an element cannot be decoded ({type(exc).__name__})") from None
    add_markers(ds, plan)
    # The 128-byte preamble is free-form (some devices put a TIFF header there): never carry it over.
    ds.preamble = b"\x00" * 128
    ds.file_meta = file_meta_for(ds, syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION)
    try:
        encoded = encode_file(ds)
    except Exception as exc:
        raise Refused(
            "unwritable", f"the de-identified instance cannot be encoded ({type(exc).__name__})"
        ) from None
    leaks = find_leaks(
        encoded, work.identifying, work.kept | _OUR_VALUES | {work.pseudonym.encode()}, work.safe_raw
    )
    if leaks:
        raise Refused("leak", "identifying values survived in: " + ", ".join(leaks[:20]))
    return Deidentified(
        encoded=encoded,
        pseudonym=work.pseudonym,
        study_uid=str(peek(ds, 0x0020000D, "") or "no-study"),
        series_uid=str(peek(ds, 0x0020000E, "") or "no-series"),
        sop_instance_uid=str(_required(ds, _SOP_INSTANCE)),
        modality=modality,
        pixel_rule=pixel_rule,
        actions=work.actions,
    )
