"""Pending policy activations awaiting a second DPO's approval (four eyes).

Revision ID: 0009_policy_approvals
Revises: 0008_release_budget
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_policy_approvals"
down_revision = "0008_release_budget"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_approvals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("bundle", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.String(32), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("replay", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("decided_at", sa.String(32), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_approvals")),
    )
    op.create_index(op.f("ix_policy_approvals_status"), "policy_approvals", ["status"])


def downgrade() -> None:
    op.drop_index(op.f("ix_policy_approvals_status"), table_name="policy_approvals")
    op.drop_table("policy_approvals")
