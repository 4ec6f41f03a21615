"""Synthesises every study of one patient and writes its files (the unit of work of the pool).

All randomness comes from ``random.Random`` and ``numpy.random.Generator`` instances seeded from
the cohort seed and the patient's index, so a patient's files do not depend on which worker
makes them or in which order. This module never uses real patient data and never reads the clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from connector.synth.context import Equipment, SeriesInfo, StudyInfo
from connector.synth.images import BUILDERS, SOP_CLASSES, instance_uid
from connector.synth.manifest import FileRecord, Recorder, WrittenFile
from connector.synth.modules import copy_dataset, series_dataset, study_dataset
from connector.synth.people import Patient, Site, age_at, da, make_patient
from connector.synth.plan import SeriesPlan, StudyPlan, patient_plan
from connector.synth.report import BASIC_TEXT_SR, sr_instance
from connector.synth.uids import seeded_int, uid
from connector.synth.writer import SeriesEncoder, write_atomic

# Studies fall between these dates; the first at a random day, the others weeks later.
FIRST_DAY = date(2016, 1, 1)
DAYS = 9 * 365

_STUDY_TEXT = {
    "ct": ("CT Thorax", "Thorax 5mm", "persistent cough"),
    "mr": ("MRT Schädel", "T1 SE sag", "headaches since spring"),
    "chest": ("Röntgen Thorax", "Thorax", "fever, suspected pneumonia"),
    "mg": ("Mammographie beidseits", "Screening", "screening programme"),
    "us": ("Sonographie Abdomen", "Abdomen", "upper abdominal pain"),
}
_MANUFACTURERS = {
    "CT": ("Synthetica Medical", "Tomoscope 64"),
    "MR": ("Synthetica Medical", "Magnetra 1.5T"),
    "CR": ("Phosphor Imaging", "PlateReader 2"),
    "DX": ("Synthetica Medical", "Radiograph DR"),
    "MG": ("Mammotech", "Senograph S"),
    "US": ("Sonix Synthetic", "Echo 5"),
    "SC": ("Synth Viewer GmbH", "ScreenGrab"),
    "SR": ("Synth Reporting", "Dictate 3"),
}


@dataclass(frozen=True)
class PatientResult:
    """What one patient contributed: its files and the identifiers a scanner must never find."""

    index: int
    files: list[WrittenFile]
    summary: dict[str, Any]


def patient_folder(index: int) -> str:
    return f"patient-{index + 1:05d}"


def _study_info(
    seed: int, patient: Patient, site: Site, plan: StudyPlan, start: datetime, rng: random.Random
) -> StudyInfo:
    title, _, reason = _STUDY_TEXT[plan.label]
    return StudyInfo(
        seed=seed,
        patient=patient,
        site=site,
        uid=uid(seed, f"p{patient.index}/{plan.folder}"),
        start=start,
        accession=f"A{rng.randrange(10**9):09d}",
        study_id=f"S{rng.randrange(10**6):06d}",
        # Clerks often type the surname into the description; real archives are full of it.
        description=f"{title} {patient.name.family}"[:64],
        requested_procedure_id=f"RP{rng.randrange(10**8):08d}",
        scheduled_step_id=f"SPS{rng.randrange(10**8):08d}",
        history=(
            f"{patient.name.display}, {age_at(patient.birth_date, start.date())}, {patient.occupation}, "
            f"{reason}. Referred by {site.referring.display}, {site.institution}."
        ),
    )


def _series_info(
    study: StudyInfo, label_kind: str, plan: SeriesPlan, start: datetime, rng: random.Random
) -> SeriesInfo:
    modality = {"SC": "OT"}.get(plan.kind, plan.kind)
    manufacturer, model = _MANUFACTURERS[plan.kind]
    station = f"{plan.kind}-{study.site.city[:8].upper()}-{rng.randrange(1, 9)}"[:16]
    label = f"{study.uid}/{plan.number}"
    _, series_text, _ = _STUDY_TEXT[label_kind]
    return SeriesInfo(
        study=study,
        uid=uid(study.seed, f"{label}/series"),
        number=plan.number,
        modality=modality,
        start=start,
        description=f"{series_text} {study.patient.patient_id}"[:64]
        if plan.kind not in ("SC", "SR")
        else f"{plan.kind} {study.patient.patient_id}",
        protocol=f"{series_text} ({study.site.department})"[:64],
        body_part=_BODY_PART.get(plan.kind, ""),
        equipment=Equipment(
            manufacturer=manufacturer,
            model=model,
            serial=f"SN{rng.randrange(10**8):08d}",
            station=station,
            software="1.0",
        ),
        frame_of_reference=uid(study.seed, f"{label}/frame-of-reference"),
        performed_step_uid=uid(study.seed, f"{label}/mpps"),
        performed_step_id=f"PPS{rng.randrange(10**7):07d}",
    )


_BODY_PART = {"CT": "CHEST", "MR": "HEAD", "CR": "CHEST", "DX": "CHEST", "MG": "BREAST", "US": "ABDOMEN"}


def _cited(plan: SeriesPlan, position: int) -> bool:
    """The report cites the first, middle and last CT slice and the screen capture."""
    if plan.kind == "CT":
        return position in (0, plan.instances // 2, plan.instances - 1)
    return plan.kind == "SC"


def _summary(patient: Patient, site: Site) -> dict[str, Any]:
    """The patient's identifying tokens, for scanners that look for them anywhere in output."""
    return {
        "dir": patient_folder(patient.index),
        "patient_id": patient.patient_id,
        "name": patient.name.pn,
        "locale": patient.locale,
        "tokens": sorted(
            {
                patient.name.family,
                patient.name.given,
                patient.patient_id,
                patient.national_id,
                patient.previous_id,
                da(patient.birth_date),
                patient.address,
                patient.phone,
                patient.mother_birth_name,
                *patient.other_names,
                site.institution,
                site.address,
                site.referring.family,
                site.performing.family,
                site.reading.family,
                site.operator.family,
                site.verifier.family,
            }
        ),
    }


def synthesise_patient(out_dir: str, seed: int, index: int) -> PatientResult:
    """Write every file of patient ``index`` under ``out_dir`` and describe them."""
    # Not for secrets: a reproducible stream of invented names, dates and identifiers.
    rng = random.Random(seeded_int(seed, f"patient/{index}"))  # noqa: S311
    start = datetime.combine(
        FIRST_DAY + timedelta(days=rng.randrange(DAYS)), time(rng.randrange(7, 18), rng.randrange(60))
    )
    patient, site = make_patient(rng, index, start.date())
    root = Path(out_dir) / patient_folder(index)
    records: list[WrittenFile] = []
    for plan in patient_plan(index):
        study = _study_info(seed, patient, site, plan, start, rng)
        study_rec = Recorder()
        study_ds = study_dataset(study, study_rec)
        cited: list[tuple[str, str, str]] = []
        series_start = start + timedelta(minutes=rng.randrange(2, 10))
        for series_plan in plan.series:
            series = _series_info(study, plan.label, series_plan, series_start, rng)
            folder = root / plan.folder / series_plan.folder
            folder.mkdir(parents=True, exist_ok=True)
            series_rec = study_rec.fork()
            base = series_dataset(study_ds, series, series_rec)
            if series_plan.kind != "SR":
                # Series-level attributes go on the base once; every instance copies them.
                BUILDERS[series_plan.kind][0](base, series, series_rec)
            encoder = SeriesEncoder(base)
            pixel_rng = np.random.default_rng(seeded_int(seed, f"{series.uid}/pixels", 64))
            for position in range(series_plan.instances):
                ds = copy_dataset(base)
                rec = series_rec.fork()
                if series_plan.kind == "SR":
                    sr_instance(ds, rec, series, instance_uid(seed, series.uid, position), cited)
                    sop_class = BASIC_TEXT_SR
                else:
                    BUILDERS[series_plan.kind][1](ds, rec, series, position, series_plan.instances, pixel_rng)
                    sop_class = SOP_CLASSES[series_plan.kind]
                    if _cited(series_plan, position):
                        cited.append((sop_class, str(ds.SOPInstanceUID), series.uid))
                records.append(_write(encoder.encode(ds), ds, rec, root, folder, position, series, sop_class))
            series_start += timedelta(minutes=rng.randrange(3, 15))
        start += timedelta(days=rng.randrange(7, 120), minutes=rng.randrange(-120, 120))
    return PatientResult(index=index, files=records, summary=_summary(patient, site))


def _write(
    data: bytes,
    ds: Dataset,
    rec: Recorder,
    root: Path,
    folder: Path,
    position: int,
    series: SeriesInfo,
    sop_class: str,
) -> WrittenFile:
    path = folder / f"{position + 1:04d}.dcm"
    write_atomic(path, data)
    return WrittenFile.of(
        FileRecord(
            path=path.relative_to(root.parent).as_posix(),
            patient=root.name,
            modality=series.modality,
            sop_class_uid=sop_class,
            study_instance_uid=series.study.uid,
            series_instance_uid=series.uid,
            sop_instance_uid=str(ds.SOPInstanceUID),
            bytes=len(data),
            phi=tuple(rec.items),
        )
    )
