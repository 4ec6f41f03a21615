"""Builders for small, hand-made DICOM instances used by the de-identification tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Kowalska^Zofia^Maria"
PATIENT_ID = "PL-88012345"


def ct_instance(path: Path, **overrides: object) -> Dataset:
    """A small CT image carrying PHI in the usual places, written to `path`."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1111"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2222"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3333"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19880112"
    ds.PatientSex = "F"
    ds.PatientAge = "036Y"
    ds.PatientAddress = "ul. Długa 5, 00-238 Warszawa"
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "OLD-4471"
    ds.StudyDate = "20240305"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC7781234"
    ds.StudyID = "S-99812"
    ds.ReferringPhysicianName = "Nowak^Jan^^Dr."
    ds.InstitutionName = "Szpital Kliniczny Warszawa"
    ds.StationName = "CT-WAW-3"
    ds.DeviceSerialNumber = "SN-55512"
    ds.StudyDescription = "CT Thorax Kowalska"
    ds.ImageComments = "Patient Zofia Kowalska, call 0048 22 123 45 67"
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetica Medical"
    ds.BodyPartExamined = "CHEST"
    ds.ConvolutionKernel = "STANDARD"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = "1"
    ds.KVP = "120"
    ds.ContentQualification = "PRODUCT"  # a standard attribute on no list: removed
    block = ds.private_block(0x0009, "HOSPITAL PACS", create=True)
    block.add_new(0x10, "LO", PATIENT_NAME)
    block.add_new(0x11, "LO", PATIENT_ID)
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds
