"""Dataspace Protocol: negotiations, agreements, transfers, seen peer tokens; jobs bound to agreements.

Revision ID: 0007_dataspace
Revises: 0006_jobs
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_dataspace"
down_revision = "0006_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dsp_negotiations",
        sa.Column("pid", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("peer_pid", sa.String(256), nullable=False),
        sa.Column("peer", sa.String(256), nullable=False),
        sa.Column("peer_address", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("offer", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("permit", sa.Text(), nullable=False),
        sa.Column("agreement_id", sa.String(64), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("policy_version", sa.String(40), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pid", name=op.f("pk_dsp_negotiations")),
    )
    op.create_index("ix_dsp_negotiations_state_deadline", "dsp_negotiations", ["state", "deadline"])
    op.create_table(
        "dsp_agreements",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("negotiation", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("provider", sa.String(256), nullable=False),
        sa.Column("consumer", sa.String(256), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("target", sa.String(1024), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("organisation", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("formats", sa.Text(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("valid_until", sa.Float(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dsp_agreements")),
    )
    op.create_index("ix_dsp_agreements_negotiation", "dsp_agreements", ["negotiation"])
    op.create_table(
        "dsp_transfers",
        sa.Column("pid", sa.String(64), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("peer_pid", sa.String(256), nullable=False),
        sa.Column("peer", sa.String(256), nullable=False),
        sa.Column("peer_address", sa.String(1024), nullable=False),
        sa.Column("agreement_id", sa.String(64), nullable=False),
        sa.Column("format", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("data_address", sa.Text(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pid", name=op.f("pk_dsp_transfers")),
    )
    op.create_index("ix_dsp_transfers_agreement_id", "dsp_transfers", ["agreement_id"])
    op.create_index("ix_dsp_transfers_state_deadline", "dsp_transfers", ["state", "deadline"])
    op.create_table(
        "dsp_seen_tokens",
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_dsp_seen_tokens")),
    )
    op.create_index("ix_dsp_seen_tokens_expires_at", "dsp_seen_tokens", ["expires_at"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("agreement_id", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("agreement_id")
    op.drop_index("ix_dsp_seen_tokens_expires_at", table_name="dsp_seen_tokens")
    op.drop_table("dsp_seen_tokens")
    op.drop_index("ix_dsp_transfers_state_deadline", table_name="dsp_transfers")
    op.drop_index("ix_dsp_transfers_agreement_id", table_name="dsp_transfers")
    op.drop_table("dsp_transfers")
    op.drop_index("ix_dsp_agreements_negotiation", table_name="dsp_agreements")
    op.drop_table("dsp_agreements")
    op.drop_index("ix_dsp_negotiations_state_deadline", table_name="dsp_negotiations")
    op.drop_table("dsp_negotiations")
