"""Plain records describing one synthetic study and series, passed from the planner to the builders.

They hold values already drawn from the seeded RNG so that builders stay pure functions of their
inputs. This module never draws random numbers and never reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from connector.synth.people import Patient, Site


@dataclass(frozen=True)
class Equipment:
    """The device that made a series."""

    manufacturer: str
    model: str
    serial: str
    station: str
    software: str


@dataclass(frozen=True)
class StudyInfo:
    """One study of a patient at a site."""

    seed: int
    patient: Patient
    site: Site
    uid: str
    start: datetime
    accession: str
    study_id: str
    description: str
    requested_procedure_id: str
    scheduled_step_id: str
    history: str


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a study."""

    study: StudyInfo
    uid: str
    number: int
    modality: str
    start: datetime
    description: str
    protocol: str
    body_part: str
    equipment: Equipment
    frame_of_reference: str
    performed_step_uid: str
    performed_step_id: str
