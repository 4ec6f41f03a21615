"""The fixed shape of every synthetic patient: which studies, series and how many instances.

The shape depends only on the patient's index, never on the seed, so ``count_files`` can tell a
progress bar the exact total before any file is written. This module never touches files.
"""

from __future__ import annotations

from dataclasses import dataclass

# Small, fixed slice counts keep a 10,000-file cohort fast while still giving real volumes.
CT_SLICES = 12
MR_SLICES = 8
MG_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
US_IMAGES = 2


@dataclass(frozen=True)
class SeriesPlan:
    """One series: its kind (which IOD builder makes it), folder name, number and instance count."""

    kind: str
    folder: str
    number: int
    instances: int


@dataclass(frozen=True)
class StudyPlan:
    """One study of a patient: its folder name, a label (what was examined) and its series."""

    folder: str
    label: str
    series: tuple[SeriesPlan, ...]


def chest_kind(patient_index: int) -> str:
    """Even patients had a computed radiograph (CR), odd ones a digital radiograph (DX)."""
    return "CR" if patient_index % 2 == 0 else "DX"


def patient_plan(patient_index: int) -> tuple[StudyPlan, ...]:
    """The studies one patient has, in the order they were acquired."""
    chest = chest_kind(patient_index)
    return (
        StudyPlan(
            "study-1-ct-chest",
            "ct",
            (
                SeriesPlan("CT", "series-1-ct", 1, CT_SLICES),
                # The SC and the SR are made after the CT they show and describe, in the same study.
                SeriesPlan("SC", "series-900-sc", 900, 1),
                SeriesPlan("SR", "series-1000-sr", 1000, 1),
            ),
        ),
        StudyPlan("study-2-mr-head", "mr", (SeriesPlan("MR", "series-1-mr", 1, MR_SLICES),)),
        StudyPlan(
            f"study-3-{chest.lower()}-chest",
            "chest",
            (
                SeriesPlan(chest, f"series-1-{chest.lower()}-pa", 1, 1),
                SeriesPlan(chest, f"series-2-{chest.lower()}-lat", 2, 1),
            ),
        ),
        StudyPlan("study-4-mg", "mg", (SeriesPlan("MG", "series-1-mg", 1, len(MG_VIEWS)),)),
        StudyPlan("study-5-us-abdomen", "us", (SeriesPlan("US", "series-1-us", 1, US_IMAGES),)),
    )


def files_per_patient(patient_index: int) -> int:
    """How many DICOM files one patient gets."""
    return sum(series.instances for study in patient_plan(patient_index) for series in study.series)


def count_files(patients: int) -> int:
    """How many files ``generate_cohort`` writes for ``patients`` patients (a progress bar's total)."""
    if patients < 0:
        raise ValueError(f"patients must be >= 0, got {patients}")
    return sum(files_per_patient(index) for index in range(patients))
