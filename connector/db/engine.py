"""Database engines and sessions, with clear errors when the database cannot be reached.

It must never put a database password in an error message or a log line, and never leave a
SQLite database (or its -wal/-shm files) readable by other users of the host.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used; the message is safe to show (no password)."""


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the worker writes; busy_timeout waits for a lock instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


DEFAULT_SQLITE_NAME = "connector.db"
_PRIVATE_FILE = 0o600
_PRIVATE_FOLDER = 0o700
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _private_folder(folder: Path, tighten: bool) -> None:
    """Create `folder` (and missing parents) 0700 whatever the umask; with `tighten`, also close
    an existing one that is ours, unless it is a shared folder (sticky, like /tmp)."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_FOLDER)
    for created in missing:
        os.chmod(created, _PRIVATE_FOLDER)  # mkdir's mode is filtered by the umask
    info = folder.stat()
    if tighten and info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX:
        os.chmod(folder, _PRIVATE_FOLDER)


def _private_sqlite_file(database: Path) -> None:
    """The database file exists 0600 before SQLite opens it (SQLite gives its -wal and -shm files
    the database file's mode), and files left by an older version are tightened at start."""
    # The default database (data_dir/connector.db) sits in the connector's own data folder, which
    # is closed at every start; a folder an operator chose for another name may be shared (never
    # chmod a /var/lib), so it is only made private when we create it.
    _private_folder(database.parent, tighten=database.name == DEFAULT_SQLITE_NAME)
    fd = os.open(database, os.O_RDWR | os.O_CREAT, _PRIVATE_FILE)
    try:
        os.fchmod(fd, _PRIVATE_FILE)
    finally:
        os.close(fd)
    for suffix in _SQLITE_COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{database}{suffix}", _PRIVATE_FILE)


def make_engine(url: str) -> Engine:
    """An engine for `url`; a SQLite file and its folder are created private (0600, 0700) on first
    use, and tightened to that at every start."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _private_sqlite_file(Path(parsed.database))
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args=_connect_args(parsed)
    )


def _connect_args(parsed: Any) -> dict[str, Any]:
    if parsed.get_backend_name() == "postgresql":
        return {"connect_timeout": 5, "application_name": "imaging-connector"}
    return {}


def check_database(engine: Engine) -> None:
    """Raise DatabaseUnavailable with a readable reason unless a trivial query succeeds."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise DatabaseUnavailable(
            f"cannot use the database at {safe_url(str(engine.url))}: {reason}"
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def rows_matched(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE run through `Session.execute` matched. It returns a CursorResult
    for them, which SQLAlchemy 2.0's annotations type as a plain Result, without rowcount."""
    return cast("CursorResult[Any]", result).rowcount


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back on any error."""
    with factory() as session, session.begin():
        yield session
