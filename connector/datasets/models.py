"""Tables of encrypted datasets: the dataset, its studies (with their wrapped data keys) and objects.

Only de-identified metadata lives here: pseudonyms, remapped UIDs, coarse cohort attributes.
A study's data key is stored only wrapped by the dataset's key-encryption key.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db.base import Base


class DatasetRecord(Base):
    __tablename__ = "datasets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str] = mapped_column(String(32))
    options: Mapped[str] = mapped_column(Text)  # canonical JSON list: a dataset's settings never change
    store: Mapped[str] = mapped_column(String(16))


class StudyRecord(Base):
    __tablename__ = "dataset_studies"
    __table_args__ = (
        UniqueConstraint("dataset", "study_uid"),
        # The cohort query walks one dataset's patients in pseudonym order (connector.policy.consent).
        Index("ix_dataset_studies_dataset_patient", "dataset", "patient_pseudonym"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name", ondelete="CASCADE"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    patient_pseudonym: Mapped[str] = mapped_column(String(64), index=True)
    wrapped_key: Mapped[str] = mapped_column(Text)  # JSON of WrappedKey
    key_id: Mapped[str] = mapped_column(String(96))
    modalities: Mapped[str] = mapped_column(String(128), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    sex: Mapped[str] = mapped_column(String(8), default="")
    age_band: Mapped[str] = mapped_column(String(16), default="")
    study_year: Mapped[str] = mapped_column(String(8), default="")
    manufacturer: Mapped[str] = mapped_column(String(64), default="")


class ObjectRecord(Base):
    __tablename__ = "dataset_objects"
    __table_args__ = (UniqueConstraint("dataset", "object_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset: Mapped[str] = mapped_column(ForeignKey("datasets.name", ondelete="CASCADE"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(400))
    relative_path: Mapped[str] = mapped_column(String(400))
    modality: Mapped[str] = mapped_column(String(16), default="")
    plain_size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    plain_sha256: Mapped[str] = mapped_column(String(64))


class RefusedPatient(Base):
    """A patient crypto-shredded from a dataset (or erased after an opt-out): a later ingest refuses them.

    Keyed by the dataset's pseudonym only (never a hospital identifier). Lifted only by an explicit,
    audited readmission. A whole-dataset shred drops these rows with the dataset's pseudonym secret:
    a dataset later created under the same name has other pseudonyms.
    """

    __tablename__ = "refused_patients"

    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    pseudonym: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(200))
    recorded_at: Mapped[str] = mapped_column(String(32))
    recorded_by: Mapped[str] = mapped_column(String(200))
