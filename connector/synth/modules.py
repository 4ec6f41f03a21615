"""Builders for the DICOM modules every synthetic instance shares (PS3.3 C.7 and C.12).

Patient, Patient Study, General Study, General Series, General Equipment, SOP Common and a
private creator block, each filled with invented identifying values that the ``Recorder`` lists
in the manifest. Study- and series-level datasets are built once and shallow-copied per
instance (no deepcopy in the hot loop). This module never uses real patient data and never
reads the clock: every date and time comes from the records it is given.
"""

from __future__ import annotations

from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector.synth.context import SeriesInfo, StudyInfo
from connector.synth.manifest import Recorder
from connector.synth.people import Person, age_at, da
from connector.synth.uids import uid
from connector.synth.vr import fit

PRIVATE_GROUP = 0x0009
PRIVATE_CREATOR = "SYNTH HOSPITAL PACS"
# The creator sits at (0009,0010), so it reserves the elements (0009,1000)-(0009,10FF).
_PRIVATE = (PRIVATE_GROUP << 16) | 0x1000
_CREATOR_TAG = (PRIVATE_GROUP << 16) | 0x0010
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
DETACHED_PATIENT_SOP_CLASS = "1.2.840.10008.3.1.2.1.1"
TIMEZONE = "+0100"


def tm(value: datetime) -> str:
    """A DICOM TM string (HHMMSS)."""
    return value.strftime("%H%M%S")


def dt(value: datetime) -> str:
    """A DICOM DT string with the site's UTC offset."""
    return value.strftime("%Y%m%d%H%M%S") + TIMEZONE


def copy_dataset(ds: Dataset) -> Dataset:
    """A shallow copy: a new element dict sharing the (never mutated) elements of ``ds``."""
    return Dataset(dict(ds._dict))


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One item of a code sequence (Code Sequence Macro, PS3.3 Table 8.8-1)."""
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = fit(meaning, "LO")
    return item


def _person_identification(rec: Recorder, person: Person, licence: str, study: StudyInfo) -> Dataset:
    # Person Identification Macro (PS3.3 Table 10-1): a licence number plus contact details.
    item = Dataset()
    item.PersonIdentificationCodeSequence = Sequence([code_item(licence, "99SYNTH", person.display)])
    rec.note("PersonIdentificationCodeSequence[0].CodeValue", licence, "id")
    rec.note("PersonIdentificationCodeSequence[0].CodeMeaning", fit(person.display, "LO"), "name")
    rec.set(item, "PersonAddress", study.site.address, "address")
    rec.set(item, "InstitutionName", study.site.institution, "institution")
    return item


def study_dataset(study: StudyInfo, rec: Recorder) -> Dataset:
    """Patient, Patient Study and General Study modules plus the private block, for one study."""
    patient, site = study.patient, study.site
    ds = Dataset()
    # ISO_IR 192 is UTF-8: accented names from every locale fit in one character set.
    ds.SpecificCharacterSet = "ISO_IR 192"

    # Patient Module (C.7.1.1) and the demographics real archives also keep.
    rec.set(ds, "PatientName", patient.name.pn, "name")
    rec.set(ds, "PatientID", patient.patient_id, "id")
    rec.set(ds, "IssuerOfPatientID", patient.issuer, "institution")
    rec.set(ds, "PatientBirthDate", da(patient.birth_date), "date")
    rec.set(ds, "PatientBirthTime", patient.birth_time, "time")
    ds.PatientSex = patient.sex
    others = []
    for position, (other_id, issuer) in enumerate(
        ((patient.national_id, patient.national_issuer), (patient.previous_id, patient.issuer))
    ):
        item = Dataset()
        at = rec.at(f"OtherPatientIDsSequence[{position}]")
        at.set(item, "PatientID", other_id, "id")
        at.set(item, "IssuerOfPatientID", issuer, "institution")
        item.TypeOfPatientID = "TEXT"
        others.append(item)
    ds.OtherPatientIDsSequence = Sequence(others)
    rec.set(ds, "OtherPatientNames", list(patient.other_names), "name")
    rec.set(ds, "PatientMotherBirthName", patient.mother_birth_name, "name")
    rec.set(ds, "PatientAddress", patient.address, "address")
    rec.set(ds, "PatientTelephoneNumbers", patient.phone, "phone")
    rec.set(ds, "EthnicGroup", patient.ethnic_group, "demographic")
    rec.set(
        ds,
        "PatientComments",
        f"{patient.name.display} prefers to be called {patient.name.given}; contact {patient.phone}.",
        "text",
    )
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = DETACHED_PATIENT_SOP_CLASS
    rec.at("ReferencedPatientSequence[0]").set(
        referenced, "ReferencedSOPInstanceUID", uid(study.seed, f"p{patient.index}/patient"), "uid"
    )
    ds.ReferencedPatientSequence = Sequence([referenced])

    # General Study Module (C.7.2.1).
    rec.set(ds, "StudyInstanceUID", study.uid, "uid")
    rec.set(ds, "StudyDate", da(study.start.date()), "date")
    rec.set(ds, "StudyTime", tm(study.start), "time")
    rec.set(ds, "ReferringPhysicianName", site.referring.pn, "name")
    ds.ReferringPhysicianIdentificationSequence = Sequence(
        [
            _person_identification(
                rec.at("ReferringPhysicianIdentificationSequence[0]"),
                site.referring,
                f"LIC{patient.index:07d}",
                study,
            )
        ]
    )
    rec.set(ds, "StudyID", study.study_id, "id")
    rec.set(ds, "AccessionNumber", study.accession, "id")
    accession_issuer = Dataset()
    rec.at("IssuerOfAccessionNumberSequence[0]").set(
        accession_issuer, "LocalNamespaceEntityID", site.institution, "institution"
    )
    ds.IssuerOfAccessionNumberSequence = Sequence([accession_issuer])
    rec.set(ds, "StudyDescription", study.description, "text")
    rec.set(ds, "PhysiciansOfRecord", site.referring.pn, "name")
    rec.set(ds, "NameOfPhysiciansReadingStudy", site.reading.pn, "name")

    # Patient Study Module (C.7.2.2).
    rec.set(ds, "PatientAge", age_at(patient.birth_date, study.start.date()), "demographic")
    rec.set(ds, "PatientSize", patient.size_m, "demographic")
    rec.set(ds, "PatientWeight", patient.weight_kg, "demographic")
    rec.set(ds, "Occupation", patient.occupation, "demographic")
    rec.set(ds, "AdditionalPatientHistory", study.history, "text")

    _private_block(ds, rec, study)
    return ds


def _private_block(ds: Dataset, rec: Recorder, study: StudyInfo) -> None:
    """A PACS vendor's private group: copies of identifiers and a private sequence holding more."""
    patient = study.patient
    ds.add_new(_CREATOR_TAG, "LO", PRIVATE_CREATOR)
    rec.private(ds, _PRIVATE | 0x01, "LO", patient.name.display, "name")
    rec.private(ds, _PRIVATE | 0x02, "LO", patient.patient_id, "id")
    rec.private(
        ds,
        _PRIVATE | 0x03,
        "LT",
        f"Booked by {study.site.referring.display} for {patient.name.display}, tel. {patient.phone}",
        "text",
    )
    rec.private(ds, _PRIVATE | 0x04, "DA", da(patient.birth_date), "date")
    item = Dataset()
    inner = rec.at("(0009,1010)[0]")
    # Each item of a private sequence carries its own creator for the private elements inside it.
    item.add_new(_CREATOR_TAG, "LO", PRIVATE_CREATOR)
    inner.private(item, _PRIVATE | 0x01, "LO", patient.name.display, "name")
    inner.private(item, _PRIVATE | 0x02, "LO", patient.previous_id, "id")
    inner.private(item, _PRIVATE | 0x05, "LO", patient.address, "address")
    inner.set(item, "PatientName", patient.other_names[0], "name")
    ds.add_new(_PRIVATE | 0x10, "SQ", Sequence([item]))


def series_dataset(study_ds: Dataset, series: SeriesInfo, rec: Recorder) -> Dataset:
    """General Series and General Equipment modules on top of a copy of the study dataset."""
    site, equipment = series.study.site, series.equipment
    ds = copy_dataset(study_ds)
    ds.Modality = series.modality
    rec.set(ds, "SeriesInstanceUID", series.uid, "uid")
    ds.SeriesNumber = series.number
    rec.set(ds, "SeriesDate", da(series.start.date()), "date")
    rec.set(ds, "SeriesTime", tm(series.start), "time")
    rec.set(ds, "SeriesDescription", series.description, "text")
    rec.set(ds, "ProtocolName", series.protocol, "text")
    if series.body_part:
        ds.BodyPartExamined = series.body_part

    if series.modality != "SR":
        # SR Document Series has no performing staff, request attributes or step details.
        _acquisition_context(ds, series, rec)
    step = Dataset()
    step.ReferencedSOPClassUID = MPPS_SOP_CLASS
    rec.at("ReferencedPerformedProcedureStepSequence[0]").set(
        step, "ReferencedSOPInstanceUID", series.performed_step_uid, "uid"
    )
    ds.ReferencedPerformedProcedureStepSequence = Sequence([step])

    # General Equipment Module (C.7.5.1).
    ds.Manufacturer = equipment.manufacturer
    rec.set(ds, "InstitutionName", site.institution, "institution")
    rec.set(ds, "InstitutionAddress", site.address, "address")
    rec.set(ds, "StationName", equipment.station, "device")
    rec.set(ds, "InstitutionalDepartmentName", site.department, "institution")
    ds.ManufacturerModelName = equipment.model
    rec.set(ds, "DeviceSerialNumber", equipment.serial, "device")
    ds.SoftwareVersions = equipment.software
    return ds


def _acquisition_context(ds: Dataset, series: SeriesInfo, rec: Recorder) -> None:
    """Who performed an image series and the order it fulfilled (General Series, C.7.3.1)."""
    study, site = series.study, series.study.site
    rec.set(ds, "PerformingPhysicianName", site.performing.pn, "name")
    rec.set(ds, "OperatorsName", site.operator.pn, "name")
    # Request Attributes Sequence: the order that led to this series, as the RIS sent it.
    request = Dataset()
    at = rec.at("RequestAttributesSequence[0]")
    at.set(request, "RequestedProcedureID", study.requested_procedure_id, "id")
    at.set(request, "ScheduledProcedureStepID", study.scheduled_step_id, "id")
    at.set(request, "AccessionNumber", study.accession, "id")
    at.set(
        request,
        "RequestedProcedureDescription",
        f"{study.description} for {study.patient.name.display}"[:64],
        "text",
    )
    at.set(request, "ScheduledProcedureStepDescription", series.description, "text")
    ds.RequestAttributesSequence = Sequence([request])
    rec.set(ds, "PerformedProcedureStepStartDate", da(series.start.date()), "date")
    rec.set(ds, "PerformedProcedureStepStartTime", tm(series.start), "time")
    rec.set(ds, "PerformedProcedureStepID", series.performed_step_id, "id")
    rec.set(ds, "PerformedProcedureStepDescription", series.description, "text")


def instance_common(
    ds: Dataset, rec: Recorder, sop_class: str, sop_uid: str, number: int, created: datetime
) -> None:
    """SOP Common (C.12.1) plus the instance number and content date/time."""
    ds.SOPClassUID = sop_class
    rec.set(ds, "SOPInstanceUID", sop_uid, "uid")
    rec.set(ds, "InstanceCreationDate", da(created.date()), "date")
    rec.set(ds, "InstanceCreationTime", tm(created), "time")
    ds.TimezoneOffsetFromUTC = TIMEZONE
    ds.InstanceNumber = number
    rec.set(ds, "ContentDate", da(created.date()), "date")
    rec.set(ds, "ContentTime", tm(created), "time")


def acquisition(ds: Dataset, rec: Recorder, when: datetime, number: int = 1) -> None:
    """Acquisition number, date, time and date-time (General Image and General Acquisition)."""
    ds.AcquisitionNumber = number
    rec.set(ds, "AcquisitionDate", da(when.date()), "date")
    rec.set(ds, "AcquisitionTime", tm(when), "time")
    rec.set(ds, "AcquisitionDateTime", dt(when), "datetime")
