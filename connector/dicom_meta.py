"""File Meta Information (DICOM PS3.10 7.1) for datasets the connector writes.

One place builds it, for every writer (de-identification, the synthetic generator). It never
copies anything from an original file's meta: that may name the sending system or instance.
"""

from __future__ import annotations

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from connector.dicom_decode import peek

_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018


def file_meta_for(
    ds: Dataset, transfer_syntax: UID, implementation_uid: str, version_name: str
) -> FileMetaDataset:
    meta = FileMetaDataset()
    for tag, vr, value in (
        (0x00020002, "UI", _uid_of(ds, _SOP_CLASS, "SOPClassUID")),
        (0x00020003, "UI", _uid_of(ds, _SOP_INSTANCE, "SOPInstanceUID")),
        (0x00020010, "UI", transfer_syntax),
        (0x00020012, "UI", implementation_uid),
        (0x00020013, "SH", version_name),
    ):
        # A single text value needs none of pydicom's conversion: built directly, as UIDs for UI.
        if isinstance(value, str):
            meta[tag] = DataElement(tag, vr, UID(value) if vr == "UI" else value, already_converted=True)
        else:
            meta[tag] = DataElement(tag, vr, value)
    return meta


def _uid_of(ds: Dataset, tag: int, keyword: str) -> object:
    """The value, read without decoding the element in place; AttributeError when absent."""
    if tag not in ds._dict:
        raise AttributeError(f"the dataset has no {keyword}")
    return peek(ds, tag)
