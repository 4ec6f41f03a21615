"""Encodes datasets as DICOM Part 10 files (Explicit VR Little Endian) and writes them atomically.

``encode`` is plain pydicom ``dcmwrite(..., enforce_file_format=True)``. ``SeriesEncoder`` gives
the same bytes faster for the instances of one series: the elements they share with the series
dataset (patient, study, series, equipment: most of each header) are encoded once by pydicom's
own ``write_data_element`` and reused, only the per-instance elements are encoded per file. The
tests check that both paths give identical bytes. This module never changes a dataset beyond its
``file_meta`` and never leaves a half-written file behind.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from typing import cast

from pydicom import dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRLittleEndian

from connector.dicom_meta import file_meta_for
from connector.synth.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

_PREAMBLE = b"\x00" * 128 + b"DICM"


def file_meta(ds: Dataset) -> FileMetaDataset:
    """File Meta Information (PS3.10 7.1) for ``ds`` with this generator's implementation UID."""
    return file_meta_for(ds, ExplicitVRLittleEndian, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)


def encode(ds: Dataset) -> bytes:
    """The Part 10 bytes of ``ds`` written by pydicom's ``dcmwrite`` (the reference encoding)."""
    ds.file_meta = file_meta(ds)
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _buffer() -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    return buffer


class SeriesEncoder:
    """Encodes the instances of one series, reusing the bytes of the elements they share.

    ``base`` is the series dataset every instance was shallow-copied from; it must not change
    after the encoder is made (instances add their own elements, they never modify shared ones).
    """

    def __init__(self, base: Dataset) -> None:
        self._base = base._dict
        self._charset = base.get("SpecificCharacterSet", "ISO_IR 6")
        self._cache: dict[BaseTag, bytes] = {}

    def _element(self, element: DataElement) -> bytes:
        buffer = _buffer()
        write_data_element(buffer, element, self._charset)
        return buffer.getvalue()

    def encode(self, ds: Dataset) -> bytes:
        """The same bytes ``encode(ds)`` gives, from cached shared elements plus the instance's own."""
        ds.file_meta = meta = file_meta(ds)
        header = _buffer()
        write_file_meta_info(header, meta, enforce_standard=True)
        parts = [_PREAMBLE, header.getvalue()]
        own = ds._dict
        for tag in sorted(own):
            # Group lengths are retired outside the meta group (PS3.5 7.2); dcmwrite skips them too.
            if tag.element == 0 and tag.group > 6:
                continue
            element = cast(DataElement, own[tag])  # built here, never read from a file: never raw
            if self._base.get(tag) is element:
                data = self._cache.get(tag)
                if data is None:
                    data = self._cache[tag] = self._element(element)
            else:
                data = self._element(element)
            parts.append(data)
        return b"".join(parts)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling renamed into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
