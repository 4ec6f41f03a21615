"""Jobs: the compute-to-data queue, states, progress and signed results.

Revision ID: 0006_jobs
Revises: 0005_compute
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_jobs"
down_revision = "0005_compute"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("submitter", sa.String(200), nullable=False),
        sa.Column("organisation", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("cohort_filter", sa.Text(), nullable=False),
        sa.Column("access_input", sa.Text(), nullable=False),
        sa.Column("permit_expires", sa.Integer(), nullable=True),
        sa.Column("package_key", sa.String(200), nullable=False),
        sa.Column("package_digest", sa.String(64), nullable=False),
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("team_key_id", sa.String(100), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("error_code", sa.String(40), nullable=False),
        sa.Column("policy_version", sa.String(40), nullable=False),
        sa.Column("cohort_hash", sa.String(64), nullable=False),
        sa.Column("cohort_size", sa.Integer(), nullable=False),
        sa.Column("studies_total", sa.Integer(), nullable=False),
        sa.Column("studies_done", sa.Integer(), nullable=False),
        sa.Column("studies_skipped", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_index("ix_jobs_submitter_created", "jobs", ["submitter", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_submitter_created", table_name="jobs")
    op.drop_index("ix_jobs_state_created", table_name="jobs")
    op.drop_table("jobs")
