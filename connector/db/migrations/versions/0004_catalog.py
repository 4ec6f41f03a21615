"""Catalog: dataset entries (steward fields, version, banded ages), rendered records, search
facets, pushes to remote catalogs.

Revision ID: 0004_catalog
Revises: 0003_policies
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_catalog"
down_revision = "0003_policies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_entries",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("steward_fields", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("issued", sa.String(32), nullable=False),
        sa.Column("modified", sa.String(32), nullable=False),
        sa.Column("min_age", sa.Integer(), nullable=True),
        sa.Column("max_age", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("dataset", name=op.f("pk_catalog_entries")),
    )
    op.create_index("ix_catalog_entries_status_dataset", "catalog_entries", ["status", "dataset"])
    op.create_index("ix_catalog_entries_modified", "catalog_entries", ["modified"])
    op.create_table(
        "catalog_documents",
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("rendered", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("dataset", name=op.f("pk_catalog_documents")),
    )
    op.create_table(
        "catalog_facets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("facet", sa.String(16), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_facets")),
    )
    op.create_index(op.f("ix_catalog_facets_dataset"), "catalog_facets", ["dataset"])
    op.create_index("ix_catalog_facets_lookup", "catalog_facets", ["facet", "value", "dataset"])
    op.create_table(
        "catalog_publications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("target", sa.String(40), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_publications")),
    )
    op.create_index(
        "ix_catalog_publications_dataset_target", "catalog_publications", ["dataset", "target", "id"]
    )


def downgrade() -> None:
    op.drop_table("catalog_publications")
    op.drop_index("ix_catalog_facets_lookup", table_name="catalog_facets")
    op.drop_index(op.f("ix_catalog_facets_dataset"), table_name="catalog_facets")
    op.drop_table("catalog_facets")
    op.drop_table("catalog_documents")
    op.drop_index("ix_catalog_entries_modified", table_name="catalog_entries")
    op.drop_index("ix_catalog_entries_status_dataset", table_name="catalog_entries")
    op.drop_table("catalog_entries")
