"""Compute-to-data: the public keys outside AI teams sign their model packages with.

Revision ID: 0005_compute
Revises: 0004_catalog
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_compute"
down_revision = "0004_catalog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "team_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("public_jwk", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("registered_at", sa.String(32), nullable=False),
        sa.Column("registered_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", sa.String(32), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_team_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_team_keys_key_id")),
    )
    op.create_index(op.f("ix_team_keys_team"), "team_keys", ["team"])


def downgrade() -> None:
    op.drop_index(op.f("ix_team_keys_team"), table_name="team_keys")
    op.drop_table("team_keys")
