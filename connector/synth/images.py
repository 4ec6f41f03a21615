"""Image IOD builders: CT, MR, CR, DX, MG, US and Secondary Capture (PS3.3 A.2 to A.32).

For each kind, ``*_series`` adds the attributes shared by the whole series to the series
dataset (built once) and ``*_instance`` adds what differs per image: position, timing, pixels.
Geometry is consistent: slices step along the normal of ImageOrientationPatient by
SpacingBetweenSlices (or SliceThickness for CT), sharing one FrameOfReferenceUID. This module
never uses real patient data and never reads the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector.synth import pixels
from connector.synth.context import SeriesInfo
from connector.synth.manifest import Recorder
from connector.synth.modules import acquisition, code_item, instance_common, tm
from connector.synth.people import da
from connector.synth.plan import MG_VIEWS
from connector.synth.uids import uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MG_IMAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"

SOP_CLASSES = {
    "CT": CT_IMAGE,
    "MR": MR_IMAGE,
    "CR": CR_IMAGE,
    "DX": DX_IMAGE_PRESENTATION,
    "MG": MG_IMAGE_PRESENTATION,
    "US": US_IMAGE,
    "SC": SC_IMAGE,
}

# CT: axial slices, 64x64 at 6 mm pixels (a 38 cm field of view), 5 mm apart.
CT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CT_PIXEL_SPACING = 6.0
CT_THICKNESS = 5.0
# MR: sagittal head slices, 4 mm thick with a 1 mm gap.
MR_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
MR_PIXEL_SPACING = 3.75
MR_THICKNESS = 4.0
MR_SPACING = 5.0


def _ds(values: tuple[float, ...] | list[float]) -> list[str]:
    # Format DS ourselves: short, exact strings (pydicom's float formatting can exceed 16 chars).
    return [f"{value:.6g}" if abs(value) > 1e-9 else "0" for value in values]


def slice_normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The slice normal: row direction cross column direction (PS3.3 C.7.6.2.1.1)."""
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def _pixel_module(ds: Dataset, rows: int, cols: int, bits_stored: int) -> None:
    """Image Pixel module (C.7.6.3) for unsigned greyscale pixels."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0


def _set_pixels(ds: Dataset, array: np.ndarray) -> None:
    ds.add_new(0x7FE00010, "OB" if array.dtype == np.uint8 else "OW", array.tobytes())


def _image_comment(ds: Dataset, rec: Recorder, series: SeriesInfo, text: str) -> None:
    rec.set(ds, "ImageComments", f"{text} - {series.study.patient.name.display}", "text")


def _frame_of_reference(ds: Dataset, rec: Recorder, series: SeriesInfo) -> None:
    rec.set(ds, "FrameOfReferenceUID", series.frame_of_reference, "uid")
    ds.PositionReferenceIndicator = ""


# --- CT (A.3) --------------------------------------------------------------------------------


def ct_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    _frame_of_reference(ds, rec, series)
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _pixel_module(ds, 64, 64, 12)
    ds.ImageOrientationPatient = _ds(CT_ORIENTATION)
    ds.PixelSpacing = _ds((CT_PIXEL_SPACING, CT_PIXEL_SPACING))
    ds.SliceThickness = _ds((CT_THICKNESS,))[0]
    ds.RescaleIntercept = str(pixels.CT_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1600"
    ds.KVP = "120"
    ds.XRayTubeCurrent = 180
    ds.ExposureTime = 500
    ds.ConvolutionKernel = "STANDARD"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds((64 * CT_PIXEL_SPACING,))[0]
    ds.GantryDetectorTilt = "0"
    ds.RotationDirection = "CW"
    ds.BurnedInAnnotation = "NO"


def ct_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    # Slice 1 is the most cranial; z decreases towards the feet (patient +z is head).
    origin = np.array([-CT_PIXEL_SPACING * 32, -CT_PIXEL_SPACING * 32, -100.0])
    position = origin - slice_normal(CT_ORIENTATION) * CT_THICKNESS * index
    ds.ImagePositionPatient = _ds(tuple(position))
    ds.SliceLocation = _ds((float(position[2]),))[0]
    acquired = series.start + timedelta(seconds=index)
    acquisition(ds, rec, acquired)
    created = acquired + timedelta(seconds=40)
    instance_common(ds, rec, CT_IMAGE, _instance_uid(series, index), index + 1, created)
    _image_comment(ds, rec, series, f"CT chest slice {index + 1}/{count}")
    _set_pixels(ds, pixels.ct_chest_slice(rng, index / max(count - 1, 1)))


# --- MR (A.4) --------------------------------------------------------------------------------


def mr_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    _frame_of_reference(ds, rec, series)
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    _pixel_module(ds, 64, 64, 12)
    ds.ImageOrientationPatient = _ds(MR_ORIENTATION)
    ds.PixelSpacing = _ds((MR_PIXEL_SPACING, MR_PIXEL_SPACING))
    ds.SliceThickness = _ds((MR_THICKNESS,))[0]
    ds.SpacingBetweenSlices = _ds((MR_SPACING,))[0]
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SP"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "se2d1"
    ds.AngioFlag = "N"
    ds.RepetitionTime = "500"
    ds.EchoTime = "12"
    ds.EchoTrainLength = 1
    ds.NumberOfAverages = "2"
    ds.ImagingFrequency = "63.87"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = 1
    ds.MagneticFieldStrength = "1.5"
    ds.WindowCenter = "600"
    ds.WindowWidth = "1200"
    ds.BurnedInAnnotation = "NO"


def mr_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    centre = (count - 1) / 2
    origin = np.array([0.0, -MR_PIXEL_SPACING * 32, MR_PIXEL_SPACING * 32])
    position = origin + slice_normal(MR_ORIENTATION) * MR_SPACING * (index - centre)
    ds.ImagePositionPatient = _ds(tuple(position))
    ds.SliceLocation = _ds((float(-position[0]),))[0]
    acquired = series.start + timedelta(seconds=20 * index)
    acquisition(ds, rec, acquired)
    created = acquired + timedelta(minutes=3)
    instance_common(ds, rec, MR_IMAGE, _instance_uid(series, index), index + 1, created)
    _image_comment(ds, rec, series, f"MR head sagittal {index + 1}/{count}")
    _set_pixels(ds, pixels.mr_head_slice(rng, index / max(count - 1, 1)))


# --- CR (A.2) and DX (A.26) chest radiographs ---------------------------------------------------


def _chest_view(series: SeriesInfo) -> tuple[str, list[str], bool]:
    # Series 1 is the postero-anterior view, series 2 the left lateral.
    lateral = series.number == 2
    return ("LL" if lateral else "PA"), (["A", "F"] if lateral else ["L", "F"]), lateral


def cr_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    view, _, _ = _chest_view(series)
    ds.ViewPosition = view
    _pixel_module(ds, 128, 128, 12)
    ds.ImagerPixelSpacing = _ds((3.0, 3.0))
    ds.KVP = "125"
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 320
    ds.DistanceSourceToDetector = "1800"
    ds.PlateID = f"PLATE{series.study.patient.index % 1000:03d}"
    ds.WindowCenter = "2000"
    ds.WindowWidth = "4000"
    ds.BurnedInAnnotation = "NO"


def _radiograph_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, sop_class: str, rng: np.random.Generator
) -> None:
    view, orientation, lateral = _chest_view(series)
    ds.PatientOrientation = orientation
    acquired = series.start + timedelta(seconds=30 * index)
    acquisition(ds, rec, acquired)
    created = acquired + timedelta(seconds=20)
    instance_common(ds, rec, sop_class, _instance_uid(series, index), index + 1, created)
    _image_comment(ds, rec, series, f"Chest {view}")
    _set_pixels(ds, pixels.chest_radiograph(rng, lateral))


def cr_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    _radiograph_instance(ds, rec, series, index, CR_IMAGE, rng)


def _dx_common(ds: Dataset, rows: int, cols: int, spacing: float) -> None:
    """DX Series, DX Image and DX Detector modules (C.8.11) shared by DX and MG."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    _pixel_module(ds, rows, cols, 12)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "2000"
    ds.WindowWidth = "4000"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = _ds((spacing, spacing))
    ds.PixelSpacing = _ds((spacing, spacing))
    ds.AcquisitionContextSequence = Sequence()
    ds.KVP = "125"
    ds.ExposureTime = 8


def dx_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    view, _, _ = _chest_view(series)
    _dx_common(ds, 128, 128, 3.0)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([code_item("51185008", "SCT", "Chest")])
    ds.ViewPosition = view
    ds.PositionerType = "COLUMN"  # an upright wall stand
    ds.ViewCodeSequence = Sequence(
        [
            code_item(
                "399348003" if view == "LL" else "399214001",
                "SCT",
                "left lateral" if view == "LL" else "postero-anterior",
            )
        ]
    )
    ds.DistanceSourceToDetector = "1800"


def dx_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    _radiograph_instance(ds, rec, series, index, DX_IMAGE_PRESENTATION, rng)


# --- MG (A.27) -------------------------------------------------------------------------------

_MG_VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
# Row and column directions as a reader hangs the films (chest wall to the outside edge).
_MG_ORIENTATION = {
    ("R", "CC"): ["L", "R"],
    ("L", "CC"): ["R", "L"],
    ("R", "MLO"): ["A", "FR"],
    ("L", "MLO"): ["P", "FL"],
}


def mg_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    _dx_common(ds, 128, 96, 0.85)
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.AnatomicRegionSequence = Sequence([code_item("76752008", "SCT", "Breast")])
    ds.BreastImplantPresent = "NO"
    ds.KVP = "28"
    ds.BodyPartThickness = "48"
    ds.CompressionForce = "110"


def mg_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    laterality, view = MG_VIEWS[index]
    code, meaning = _MG_VIEW_CODES[view]
    ds.ImageLaterality = laterality
    view_item = code_item(code, "SCT", meaning)
    view_item.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_item])
    ds.PatientOrientation = _MG_ORIENTATION[(laterality, view)]
    ds.PositionerPrimaryAngle = "0" if view == "CC" else ("45" if laterality == "R" else "-45")
    acquired = series.start + timedelta(seconds=60 * index)
    acquisition(ds, rec, acquired)
    instance_common(
        ds,
        rec,
        MG_IMAGE_PRESENTATION,
        _instance_uid(series, index),
        index + 1,
        acquired + timedelta(seconds=15),
    )
    _image_comment(ds, rec, series, f"{laterality}{view}")
    _set_pixels(ds, pixels.mammogram(rng, laterality))


# --- US (A.6) with burned-in annotation ---------------------------------------------------------

US_ROWS, US_COLS = 128, 192


def us_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    _pixel_module(ds, US_ROWS, US_COLS, 8)
    ds.LossyImageCompression = "00"
    ds.PatientOrientation = ""
    # Like most scanners, the console draws the patient banner into the image itself.
    ds.BurnedInAnnotation = "YES"
    ds.TransducerData = "C5-2"
    ds.ProcessingFunction = "ABD"


def us_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    patient = series.study.patient
    acquired = series.start + timedelta(seconds=45 * index)
    acquisition(ds, rec, acquired)
    instance_common(ds, rec, US_IMAGE, _instance_uid(series, index), index + 1, acquired)
    _image_comment(ds, rec, series, f"Liver image {index + 1}")
    image = pixels.ultrasound(rng, US_ROWS, US_COLS)
    # The banner: name and ID on the first line, birth date and exam time on the second.
    lines = [
        f"{patient.name.display}  {patient.patient_id}",
        f"DOB {da(patient.birth_date)}  {da(acquired.date())} {tm(acquired)}",
    ]
    for text, box in pixels.burn_text(image, lines, left=2, top=1):
        rec.pixels(text, box)
    _set_pixels(ds, image)


# --- Secondary Capture (A.8) of a report screen ------------------------------------------------


def sc_series(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    ds.ConversionType = "WSD"
    ds.SecondaryCaptureDeviceManufacturer = "Synth Viewer GmbH"
    ds.SecondaryCaptureDeviceManufacturerModelName = "ScreenGrab"
    _pixel_module(ds, 128, 256, 8)
    ds.PatientOrientation = ""
    # A screen grab of the chest CT: naming an unpaired body part makes Laterality (2C) not apply.
    ds.BodyPartExamined = "CHEST"
    ds.BurnedInAnnotation = "YES"


def sc_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, index: int, count: int, rng: np.random.Generator
) -> None:
    patient, study = series.study.patient, series.study
    captured = series.start + timedelta(minutes=5)
    rec.set(ds, "DateOfSecondaryCapture", da(captured.date()), "date")
    rec.set(ds, "TimeOfSecondaryCapture", tm(captured), "time")
    instance_common(ds, rec, SC_IMAGE, _instance_uid(series, index), index + 1, captured)
    _image_comment(ds, rec, series, "Screen capture of the CT viewer")
    image = pixels.secondary_capture(rng)
    lines = [
        patient.name.display,
        f"ID {patient.patient_id}",
        f"DOB {patient.birth_date.strftime('%d.%m.%Y')}",
        f"ACC {study.accession}  {study.site.institution[:30]}",
    ]
    for text, box in pixels.burn_text(image, lines, left=4, top=2):
        rec.pixels(text, box)
    _set_pixels(ds, image)


def _instance_uid(series: SeriesInfo, index: int) -> str:
    return instance_uid(series.study.seed, series.uid, index)


def instance_uid(seed: int, series_uid: str, index: int) -> str:
    """The SOP Instance UID of image ``index`` of a series (the SR needs it before the image exists)."""
    return uid(seed, f"{series_uid}/{index}")


SeriesBuilder = Callable[[Dataset, SeriesInfo, Recorder], None]
InstanceBuilder = Callable[[Dataset, Recorder, SeriesInfo, int, int, np.random.Generator], None]

BUILDERS: dict[str, tuple[SeriesBuilder, InstanceBuilder]] = {
    "CT": (ct_series, ct_instance),
    "MR": (mr_series, mr_instance),
    "CR": (cr_series, cr_instance),
    "DX": (dx_series, dx_instance),
    "MG": (mg_series, mg_instance),
    "US": (us_series, us_instance),
    "SC": (sc_series, sc_instance),
}
