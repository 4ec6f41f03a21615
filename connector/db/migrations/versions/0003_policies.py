"""Policies: activated policy versions, the consent registry (by pseudonym), revoked data permits,
and an index for the cohort query.

Revision ID: 0003_policies
Revises: 0002_encrypted_datasets
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_policies"
down_revision = "0002_encrypted_datasets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_dataset_studies_dataset_patient", "dataset_studies", ["dataset", "patient_pseudonym"])
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("bundle", sa.Text(), nullable=False),
        sa.Column("activated_at", sa.String(32), nullable=False),
        sa.Column("activated_by", sa.String(200), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policy_versions")),
    )
    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
        sa.UniqueConstraint("dataset", "pseudonym", name=op.f("uq_consent_records_dataset")),
    )
    op.create_index(op.f("ix_consent_records_dataset"), "consent_records", ["dataset"])
    op.create_table(
        "revoked_permits",
        sa.Column("permit_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.String(32), nullable=False),
        sa.Column("revoked_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("permit_id", name=op.f("pk_revoked_permits")),
    )


def downgrade() -> None:
    op.drop_table("revoked_permits")
    op.drop_index(op.f("ix_consent_records_dataset"), table_name="consent_records")
    op.drop_table("consent_records")
    op.drop_table("policy_versions")
    op.drop_index("ix_dataset_studies_dataset_patient", table_name="dataset_studies")
