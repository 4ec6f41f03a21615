"""Burned-in text: which instances may carry it, and blanking the regions a rule names.

An instance that may carry burned-in text either matches a rule of the Clean Pixel Data option
and has those regions blanked, or is refused (the caller quarantines it). Nothing that may show
a patient's name in its pixels passes uncleaned. This module never decides on header elements.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from connector.deid.plan import Condition, PixelRule, Plan
from connector.dicom_decode import peek

# Modalities whose devices routinely draw patient banners into the image.
ALWAYS_REVIEW_MODALITIES = frozenset({"US", "OT", "XC", "ES", "GM", "SC", "DOC"})
# Projection modalities where some devices do: reviewed unless the instance says it has none.
REVIEW_UNLESS_DECLARED = frozenset({"CR", "DX", "XA", "RF", "MG", "IO", "PX"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


class PixelCleaningRefused(Exception):
    """The instance may carry burned-in text and cannot be cleaned; the message says why."""


def may_carry_burned_in_text(ds: Dataset) -> bool:
    # Peeked at, not decoded in place: elements left raw are copied as they are on writing.
    if 0x7FE00010 not in ds._dict:
        return False
    declared = str(peek(ds, 0x00280301, "")).upper()  # Burned In Annotation
    if declared == "YES":
        return True
    modality = str(peek(ds, 0x00080060, "")).upper()
    if modality in ALWAYS_REVIEW_MODALITIES or str(peek(ds, 0x00080016, "")).startswith(
        SECONDARY_CAPTURE_PREFIX
    ):
        return True
    image_type = [str(v).upper() for v in (peek(ds, 0x00080008) or [])]
    if "SCREEN SHOT" in image_type or "SCREENSHOT" in image_type:
        return True
    return modality in REVIEW_UNLESS_DECLARED and declared != "NO"


def _holds(condition: Condition, ds: Dataset) -> bool:
    present = condition.keyword in ds
    value = str(ds.get(condition.keyword, "") or "")
    if condition.op == "missing":
        return not present
    if condition.op == "present":
        return present
    if condition.op == "empty":
        return present and not value.strip()
    expected = condition.value or ""
    if condition.op == "equals":
        return value.strip() == expected
    if condition.op == "notequals":
        return value.strip() != expected
    if condition.op == "contains":
        return expected.lower() in value.lower()
    return expected.lower() not in value.lower()  # notcontains


def matching_rule(ds: Dataset, plan: Plan) -> PixelRule | None:
    for rule in plan.pixel_rules:
        if all(_holds(condition, ds) for condition in rule.conditions):
            return rule
    return None


def clean_pixels(ds: Dataset, plan: Plan) -> str:
    """Blank the rule's regions in every frame; return the rule's label. Raises PixelCleaningRefused."""
    if not plan.cleans_pixels:
        raise PixelCleaningRefused("may carry burned-in text and the Clean Pixel Data option is not selected")
    rule = matching_rule(ds, plan)
    if rule is None:
        raise PixelCleaningRefused(
            f"may carry burned-in text and no pixel-cleaning rule matches manufacturer "
            f"{str(ds.get('Manufacturer', '?'))[:40]!r} "
            f"model {str(ds.get('ManufacturerModelName', '?'))[:40]!r}"
        )
    try:
        pixels = ds.pixel_array.copy()
    except Exception as exc:
        raise PixelCleaningRefused(
            f"pixel data cannot be decoded for cleaning ({type(exc).__name__})"
        ) from None
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    view = (
        pixels.reshape((frames, rows, columns, samples))
        if pixels.size == frames * rows * columns * samples
        else None
    )
    if view is None:
        raise PixelCleaningRefused("pixel data does not match Rows x Columns x frames")
    for xmin, ymin, xmax, ymax in rule.boxes:
        view[:, ymin : min(ymax, rows), xmin : min(xmax, columns), :] = np.min(pixels) if pixels.size else 0
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if samples > 1:
            ds.PlanarConfiguration = 0
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"
    ds.PixelData = pixels.astype(pixels.dtype, copy=False).tobytes()
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    ds.BurnedInAnnotation = "NO"
    return rule.label
