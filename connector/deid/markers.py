"""The de-identification markers of PS3.15 E.1-1: Patient Identity Removed, the method, CID 7050 codes.

Written after the plan ran, so they are never removed by it; they name only the profile, options
and software, never anything about the patient.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from connector import __version__
from connector.deid.options import BASIC, OPTIONS
from connector.deid.plan import Plan
from connector.dicom_encode import as_raw, writes_ascii_as_is


def add_markers(ds: Dataset, plan: Plan) -> None:
    # Undecoded elements where the writer copies them as they are (the same bytes as the decoded
    # ones, encoded once per plan), else decoded elements.
    raw = _raw_markers(plan.options) if writes_ascii_as_is(ds) else None
    for index, (tag, keyword, vr, value) in enumerate(_marker_values(plan.options)):
        if tag in ds._dict:
            setattr(ds, keyword, value)  # an element the plan kept: its value changes, as pydicom does it
        elif raw is not None and (element := raw[index]) is not None:
            ds._dict[element.tag] = element  # a standard tag, never Pixel Data: nothing else to update
        else:
            ds[tag] = _decoded(tag, vr, value)


def _decoded(tag: int, vr: str, value: object) -> DataElement:
    # Plain ASCII text and a sequence, already in pydicom's decoded form: nothing for pydicom to
    # convert or validate again for every instance.
    converted = MultiValue(str, value) if isinstance(value, list) else value
    return DataElement(tag, vr, converted, already_converted=True)


@lru_cache(maxsize=32)
def _marker_values(options: tuple[str, ...]) -> tuple[tuple[int, str, str, object], ...]:
    method, codes, temporal = _markers(options)
    # One read-only sequence per plan, shared by every instance of the run: it is only ever written.
    return (
        (0x00120062, "PatientIdentityRemoved", "CS", "YES"),
        (0x00120063, "DeidentificationMethod", "LO", method),
        (0x00120064, "DeidentificationMethodCodeSequence", "SQ", codes),
        (0x00280303, "LongitudinalTemporalInformationModified", "CS", temporal),
    )


@lru_cache(maxsize=32)
def _raw_markers(options: tuple[str, ...]) -> tuple[RawDataElement | None, ...]:
    return tuple(as_raw(_decoded(tag, vr, value)) for tag, _, vr, value in _marker_values(options))


@lru_cache(maxsize=32)
def _markers(options: tuple[str, ...]) -> tuple[list[str], Sequence, str]:
    chosen = [BASIC, *(OPTIONS[name] for name in options)]
    # LO values hold at most 64 characters: one value per profile part.
    method = [option.meaning[:64] for option in chosen] + [f"imaging-connector {__version__}"]
    items = []
    for option in chosen:
        item = Dataset()
        item.CodeValue = option.code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = option.meaning
        items.append(item)
    if "retain-longitudinal-full-dates" in options:
        temporal = "UNMODIFIED"
    elif "retain-longitudinal-modified-dates" in options:
        temporal = "MODIFIED"
    else:
        temporal = "REMOVED"
    return method, Sequence(items), temporal
