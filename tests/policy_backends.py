"""Fixtures for policy-backend tests: a fresh backend of each kind, and the OPA test server.

`backend` is parametrised over "embedded" (OPA's engine in-process) and "opa-server" (the
production backend, talking to `tests.opa_rest_test_server`, since no OPA server binary can be
installed here), so one test body checks that both give the same answers; `opa_test_server` and
`make_server_backend` serve tests of the server backend alone. A test module gets the fixtures with
`pytest_plugins = ["tests.policy_backends"]` (importing them trips ruff's F811).
This module only builds backends and servers for tests; it never loads the real `policies/`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from connector.policy.engine import EmbeddedOpaBackend, PolicyBackend
from connector.policy.opa_server import OpaServerBackend
from tests.opa_rest_test_server import OpaRestTestServer

BACKEND_KINDS = ["embedded", "opa-server"]


def _server_backend(server: OpaRestTestServer, **options: Any) -> OpaServerBackend:
    """An OpaServerBackend on `server` with its token; no retries, so failures show at once."""
    settings: dict[str, Any] = {"token": server.token, "timeout": 10.0, "retries": 0}
    settings.update(options)
    return OpaServerBackend(server.url, **settings)


@pytest.fixture
def opa_test_server() -> Iterator[OpaRestTestServer]:
    """A running OPA test server on 127.0.0.1 that wants a random bearer token."""
    server = OpaRestTestServer(token=secrets.token_urlsafe(16)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest) -> Iterator[PolicyBackend]:
    """A fresh, empty policy backend of each kind."""
    chosen: EmbeddedOpaBackend | OpaServerBackend
    if request.param == "embedded":
        chosen = EmbeddedOpaBackend()
    else:
        chosen = _server_backend(request.getfixturevalue("opa_test_server"))
    try:
        yield chosen
    finally:
        chosen.close()


@pytest.fixture
def make_server_backend() -> Iterator[Callable[..., OpaServerBackend]]:
    """`make(server, **options)`: an OpaServerBackend on a test server (token, no retries), closed after."""
    made: list[OpaServerBackend] = []

    def make(server: OpaRestTestServer, **options: Any) -> OpaServerBackend:
        made.append(_server_backend(server, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()
