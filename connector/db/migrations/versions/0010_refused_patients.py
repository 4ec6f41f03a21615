"""Patients remembered as shredded or opted out (by keyed pseudonym), so a later ingest refuses them.

Revision ID: 0010_refused_patients
Revises: 0009_policy_approvals
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_refused_patients"
down_revision = "0009_policy_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refused_patients",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("pseudonym", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("recorded_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("dataset", "pseudonym", name=op.f("pk_refused_patients")),
    )


def downgrade() -> None:
    op.drop_table("refused_patients")
