"""Alembic environment: runs migrations on the engine the connector hands over (never reads alembic.ini)."""

from __future__ import annotations

from alembic import context

import connector.db.models  # noqa: F401  (registers every table on Base.metadata)
from connector.db.base import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
