"""The de-identification markers of PS3.15 E.1-1: Patient Identity Removed, the method, CID 7050 codes.

Written after the plan ran, so they are never removed by it; they name only the profile, options
and software, never anything about the patient.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector import __version__
from connector.deid.options import BASIC, OPTIONS
from connector.deid.plan import Plan


def add_markers(ds: Dataset, plan: Plan) -> None:
    ds.PatientIdentityRemoved = "YES"
    chosen = [BASIC, *(OPTIONS[name] for name in plan.options)]
    # LO values hold at most 64 characters: one value per profile part.
    ds.DeidentificationMethod = [option.meaning[:64] for option in chosen] + [
        f"imaging-connector {__version__}"
    ]
    items = []
    for option in chosen:
        item = Dataset()
        item.CodeValue = option.code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = option.meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)
    if "retain-longitudinal-full-dates" in plan.options:
        ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif "retain-longitudinal-modified-dates" in plan.options:
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        ds.LongitudinalTemporalInformationModified = "REMOVED"
