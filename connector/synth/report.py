"""The radiology report of the CT study as a Basic Text SR (PS3.3 A.35.1).

Its ContentSequence names the patient in free text (as dictated reports do) and references
images of the same study by IMAGE content items; CurrentRequestedProcedureEvidenceSequence lists
those images by study and series. This module never uses real patient data and never reads the
clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from connector.synth.context import SeriesInfo
from connector.synth.manifest import Recorder
from connector.synth.modules import code_item, dt, instance_common

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

#: (sop class uid, sop instance uid, series instance uid) of each image the report cites.
Reference = tuple[str, str, str]


def _item(relationship: str, value_type: str, concept: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([code_item(*concept)])
    return item


def _text(rec: Recorder, relationship: str, concept: tuple[str, str, str], text: str) -> Dataset:
    item = _item(relationship, "TEXT", concept)
    rec.set(item, "TextValue", text, "text")
    return item


def _image(rec: Recorder, reference: Reference) -> Dataset:
    item = _item("CONTAINS", "IMAGE", ("121080", "DCM", "Best illustration of finding"))
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = reference[0]
    rec.at("ReferencedSOPSequence[0]").set(referenced, "ReferencedSOPInstanceUID", reference[1], "uid")
    item.ReferencedSOPSequence = Sequence([referenced])
    return item


def sr_instance(
    ds: Dataset, rec: Recorder, series: SeriesInfo, sop_uid: str, references: list[Reference]
) -> None:
    """Fill SR Document General and SR Document Content for a report citing ``references``."""
    study = series.study
    patient, site = study.patient, study.site
    written: datetime = series.start + timedelta(hours=2)
    instance_common(ds, rec, BASIC_TEXT_SR, sop_uid, 1, written)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    verifier = Dataset()
    at = rec.at("VerifyingObserverSequence[0]")
    at.set(verifier, "VerifyingObserverName", site.verifier.pn, "name")
    verifier.VerifyingObserverIdentificationCodeSequence = Sequence()
    at.set(verifier, "VerifyingOrganization", site.institution, "institution")
    at.set(verifier, "VerificationDateTime", dt(written + timedelta(minutes=30)), "datetime")
    ds.VerifyingObserverSequence = Sequence([verifier])
    ds.PerformedProcedureCodeSequence = Sequence([code_item("24627-2", "LN", "CT Chest")])

    by_series: dict[str, list[Reference]] = {}
    for reference in references:
        by_series.setdefault(reference[2], []).append(reference)
    evidence = Dataset()
    evidence.StudyInstanceUID = study.uid
    evidence_series = []
    for series_uid, cited in by_series.items():
        entry = Dataset()
        entry.SeriesInstanceUID = series_uid
        instances = []
        for sop_class, instance_uid, _ in cited:
            referenced = Dataset()
            referenced.ReferencedSOPClassUID = sop_class
            referenced.ReferencedSOPInstanceUID = instance_uid
            instances.append(referenced)
        entry.ReferencedSOPSequence = Sequence(instances)
        evidence_series.append(entry)
    evidence.ReferencedSeriesSequence = Sequence(evidence_series)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])

    # SR Document Content: the root container and its tree.
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code_item("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"
    observer = _item("HAS OBS CONTEXT", "PNAME", ("121008", "DCM", "Person Observer Name"))
    rec.at("ContentSequence[0]").set(observer, "PersonName", site.reading.pn, "name")
    history = _text(
        rec.at("ContentSequence[1]"),
        "CONTAINS",
        ("121060", "DCM", "History"),
        f"{patient.name.display} (ID {patient.patient_id}, born {patient.birth_date.strftime('%d/%m/%Y')}), "
        f"referred by {site.referring.display} for persistent cough.",
    )
    findings = _item("CONTAINS", "CONTAINER", ("121070", "DCM", "Findings"))
    findings.ContinuityOfContent = "SEPARATE"
    inner = rec.at("ContentSequence[2]")
    finding_items = [
        _text(
            inner.at("ContentSequence[0]"),
            "CONTAINS",
            ("121071", "DCM", "Finding"),
            f"No focal consolidation. Compared with the prior study of {patient.name.family} at "
            f"{site.institution}.",
        )
    ]
    for position, reference in enumerate(references, start=1):
        finding_items.append(_image(inner.at(f"ContentSequence[{position}]"), reference))
    findings.ContentSequence = Sequence(finding_items)
    impression = _text(
        rec.at("ContentSequence[3]"),
        "CONTAINS",
        ("121073", "DCM", "Impression"),
        f"Normal chest CT for {patient.name.display}. Dictated by {site.reading.display}.",
    )
    ds.ContentSequence = Sequence([observer, history, findings, impression])
