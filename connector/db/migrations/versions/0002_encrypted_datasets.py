"""Encrypted datasets: datasets, their studies (wrapped data keys, cohort attributes) and objects.

Revision ID: 0002_encrypted_datasets
Revises: 0001_audit_trail
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_encrypted_datasets"
down_revision = "0001_audit_trail"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("options", sa.Text(), nullable=False),
        sa.Column("store", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_datasets")),
    )
    op.create_table(
        "dataset_studies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("patient_pseudonym", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(96), nullable=False),
        sa.Column("modalities", sa.String(128), nullable=False),
        sa.Column("body_part", sa.String(64), nullable=False),
        sa.Column("sex", sa.String(8), nullable=False),
        sa.Column("age_band", sa.String(16), nullable=False),
        sa.Column("study_year", sa.String(8), nullable=False),
        sa.Column("manufacturer", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset"],
            ["datasets.name"],
            name=op.f("fk_dataset_studies_dataset_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_studies")),
        sa.UniqueConstraint("dataset", "study_uid", name=op.f("uq_dataset_studies_dataset")),
    )
    op.create_index(op.f("ix_dataset_studies_dataset"), "dataset_studies", ["dataset"])
    op.create_index(op.f("ix_dataset_studies_patient_pseudonym"), "dataset_studies", ["patient_pseudonym"])
    op.create_table(
        "dataset_objects",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("object_key", sa.String(400), nullable=False),
        sa.Column("relative_path", sa.String(400), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("plain_size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("plain_sha256", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset"],
            ["datasets.name"],
            name=op.f("fk_dataset_objects_dataset_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_objects")),
        sa.UniqueConstraint("dataset", "object_key", name=op.f("uq_dataset_objects_dataset")),
    )
    op.create_index(op.f("ix_dataset_objects_dataset"), "dataset_objects", ["dataset"])
    op.create_index(op.f("ix_dataset_objects_study_uid"), "dataset_objects", ["study_uid"])


def downgrade() -> None:
    op.drop_table("dataset_objects")
    op.drop_table("dataset_studies")
    op.drop_table("datasets")
