"""Released-number budgets per team and dataset (egress).

Revision ID: 0008_release_budget
Revises: 0007_dataspace
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_release_budget"
down_revision = "0007_dataspace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_budgets",
        sa.Column("team", sa.String(200), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("releases", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("team", "dataset"),
    )


def downgrade() -> None:
    op.drop_table("release_budgets")
