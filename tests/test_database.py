"""The metadata database on SQLite and the real PostgreSQL: migrations, start-up, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from connector.cli import app
from connector.db.engine import DatabaseUnavailable, check_database, make_engine
from connector.db.migrate import current_revision, head_revision, upgrade
from connector.runtime import build_runtime
from connector.settings import load_settings


def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(engine)  # a second start changes nothing
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"audit_entries", "audit_head", "audit_checkpoints", "alembic_version"} <= tables
    engine.dispose()


def test_audit_entries_are_append_only_in_the_database(database_url: str, tmp_path: Path) -> None:
    runtime = build_runtime(load_settings(data_dir=tmp_path / "d", database_url=database_url))
    runtime.audit.record("alice", "test.action", "thing", "success")
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as connection:
        connection.execute(text("UPDATE audit_entries SET actor = 'mallory'"))
    with pytest.raises(DBAPIError, match="append-only"), runtime.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_entries"))
    assert runtime.audit.verify().ok
    runtime.close()


def test_downgrade_and_upgrade_round_trip(database_url: str) -> None:
    from alembic import command

    from connector.db.migrate import alembic_config

    engine = make_engine(database_url)
    upgrade(engine)
    command.downgrade(alembic_config(engine), "base")
    assert "audit_entries" not in inspect(engine).get_table_names()
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_unreachable_postgres_gives_a_clear_error_without_password() -> None:
    engine = make_engine("postgresql+psycopg://connector:s3cret@127.0.0.1:1/connector")
    with pytest.raises(DatabaseUnavailable) as caught:
        check_database(engine)
    message = str(caught.value)
    assert "s3cret" not in message
    assert "127.0.0.1:1" in message
    assert "cannot use the database" in message


def test_cli_reports_unreachable_database_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(
        "CONNECTOR_DATABASE_URL", "postgresql+psycopg://connector:s3cret@127.0.0.1:1/connector"
    )
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code == 2
    assert "cannot use the database" in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


def test_outdated_schema_without_auto_migrate_is_refused(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, auto_migrate=False)
    with pytest.raises(DatabaseUnavailable, match="connector db upgrade"):
        build_runtime(settings)
    result = CliRunner().invoke(app, ["db", "upgrade"], env={"CONNECTOR_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    build_runtime(settings).close()
