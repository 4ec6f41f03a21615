"""The de-identification markers of PS3.15 E.1-1: Patient Identity Removed, the method, CID 7050 codes.

Written after the plan ran, so they are never removed by it; they name only the profile, options
and software, never anything about the patient.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector import __version__
from connector.deid.options import BASIC, OPTIONS
from connector.deid.plan import Plan


def add_markers(ds: Dataset, plan: Plan) -> None:
    method, codes, temporal = _markers(plan.options)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = method
    # One read-only sequence per plan, shared by every instance of the run: it is only ever written.
    ds.DeidentificationMethodCodeSequence = codes
    ds.LongitudinalTemporalInformationModified = temporal


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
