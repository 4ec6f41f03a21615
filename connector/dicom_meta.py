"""File Meta Information (DICOM PS3.10 7.1) for datasets the connector writes.

One place builds it, for every writer (de-identification, the synthetic generator). It never
copies anything from an original file's meta: that may name the sending system or instance.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID


def file_meta_for(
    ds: Dataset, transfer_syntax: UID, implementation_uid: str, version_name: str
) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = implementation_uid
    meta.ImplementationVersionName = version_name
    return meta
