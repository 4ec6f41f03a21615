"""Both policy backends on the same small Rego bundles: same answers, same refusals, fail closed.

The "opa-server" backend runs against `tests.opa_rest_test_server` (the real OPA engine behind
OPA's REST API); its failure tests use real sockets: a closed port (server down), a port that never
answers (timeout) and a plain HTTP server that answers with things OPA never says (malformed).
The bundles here are written in the tests, not read from `policies/`.
"""

from __future__ import annotations

import importlib.metadata
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from connector.policy.bundle import BundleError, PolicyBundle
from connector.policy.engine import EmbeddedOpaBackend, PolicyBackend, PolicyEngineError
from connector.policy.opa_server import HEALTH_POLICY_ID, POLICY_ID_PREFIX, OpaServerBackend, policy_id
from tests.opa_rest_test_server import OpaRestTestServer

# The fixtures `backend` (embedded / opa-server), `opa_test_server` and `make_server_backend`.
pytest_plugins = ["tests.policy_backends"]
MakeBackend = Callable[..., OpaServerBackend]

ACCESS = """package t.access

default allow := false

allow if {
	input.purpose in data.t.purposes
	not input.permit in data.connector.state.revoked
}

reasons contains "revoked permit" if input.permit in data.connector.state.revoked

open if data.connector.state.open
"""

ROWS = """package t.rows

include if {
	input.patients.site == input.site
	input.patients.age >= data.t.min_age
}

include if {
	input.everyone
}

include if {
	input.patients.pseudonym == data.connector.state.pinned
}
"""

DATA = '{"purposes": ["research", "education"], "min_age": 18}'


def first_bundle() -> PolicyBundle:
    return PolicyBundle({"t/access.rego": ACCESS, "t/rows.rego": ROWS, "t/data.json": DATA})


STATE: dict[str, Any] = {"revoked": ["permit-7"], "open": True, "pinned": "PSN-1"}
RESEARCH = {"purpose": "research", "permit": "permit-1"}


# -- the same answers on both backends ----------------------------------------------------------


def test_evaluates_rules_and_data_of_a_loaded_bundle(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), STATE)
    assert backend.evaluate("t.access.allow", RESEARCH) is True
    assert backend.evaluate("t.access.allow", {"purpose": "advertising", "permit": "permit-1"}) is False
    assert backend.evaluate("t.access.allow", {"purpose": "research", "permit": "permit-7"}) is False
    assert backend.evaluate("t.access.reasons", {"purpose": "research", "permit": "permit-7"}) == [
        "revoked permit"
    ]
    assert backend.evaluate("t.purposes", None) == ["research", "education"]
    assert backend.evaluate("connector.state", None) == STATE
    assert backend.evaluate("t.access.open", None) is True


def test_undefined_documents_are_none(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), {"revoked": []})
    assert backend.evaluate("t.access.open", None) is None  # a rule whose body fails
    assert backend.evaluate("t.access.nothing_here", RESEARCH) is None
    assert backend.evaluate("no_such.package.rule", RESEARCH) is None


def test_check_passes_on_a_fresh_backend(backend: PolicyBackend) -> None:
    backend.check()
    backend.load(first_bundle(), STATE)
    backend.check()


def test_set_state_replaces_the_whole_state_and_keeps_the_bundle(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), STATE)
    backend.set_state({"revoked": []})
    assert backend.evaluate("connector.state", None) == {"revoked": []}  # "open", "pinned" are gone
    assert backend.evaluate("t.access.open", None) is None
    assert backend.evaluate("t.access.allow", {"purpose": "research", "permit": "permit-7"}) is True
    assert backend.evaluate("t.purposes", None) == ["research", "education"]


def test_load_replaces_modules_and_data(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), STATE)
    narrower = ACCESS.replace("reasons contains", "why contains")
    backend.load(
        PolicyBundle({"t/access.rego": narrower, "t/data.json": '{"purposes": ["research"]}'}), STATE
    )
    assert backend.evaluate("t.rows.include", {"everyone": True}) is None  # its module is gone
    assert backend.evaluate("t.access.reasons", {"purpose": "research", "permit": "permit-7"}) is None
    assert backend.evaluate("t.access.why", {"purpose": "research", "permit": "permit-7"}) == [
        "revoked permit"
    ]
    assert backend.evaluate("t.purposes", None) == ["research"]
    assert backend.evaluate("t.min_age", None) is None  # data that left the bundle is gone too
    assert backend.evaluate("t.access.allow", {"purpose": "education", "permit": "permit-1"}) is False


def test_modules_that_call_each_other_load_in_any_order(backend: PolicyBackend) -> None:
    # "a/" sorts before "z/": a server that took modules in order would refuse a/uses.rego first.
    uses = "package a.uses\n\nallow if data.z.lib.is_adult(input.age)\n"
    lib = "package z.lib\n\nis_adult(age) if age >= 18\n"
    backend.load(PolicyBundle({"a/uses.rego": uses, "z/lib.rego": lib}), {})
    assert backend.evaluate("a.uses.allow", {"age": 40}) is True
    assert backend.evaluate("a.uses.allow", {"age": 4}) is None


def test_an_input_that_is_not_json_is_an_error(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), STATE)
    with pytest.raises(PolicyEngineError):
        backend.evaluate("t.access.allow", {"purpose": float("nan")})
    with pytest.raises(PolicyEngineError):
        backend.compile_filter("t.rows.include", {"site": float("inf")}, ["input.patients"], "sqlite")


@pytest.mark.parametrize(
    ("dialect", "site", "expected"),
    [
        (
            "postgresql",
            "Oslo",
            "(patients.pseudonym = E'PSN-1' OR (patients.site = E'Oslo' AND patients.age >= E'18'))",
        ),
        (
            "sqlite",
            "Oslo",
            "(patients.pseudonym = 'PSN-1' OR (patients.site = 'Oslo' AND patients.age >= '18'))",
        ),
        (
            "postgresql",
            "O'Hara",
            "(patients.pseudonym = E'PSN-1' OR (patients.site = E'O\\'Hara' AND patients.age >= E'18'))",
        ),
        (
            "sqlite",
            "O'Hara",
            "(patients.pseudonym = 'PSN-1' OR (patients.site = 'O''Hara' AND patients.age >= '18'))",
        ),
    ],
)
def test_compile_filter_gives_the_same_sql_on_both(
    backend: PolicyBackend, dialect: Any, site: str, expected: str
) -> None:
    backend.load(first_bundle(), STATE)
    where = backend.compile_filter(
        "t.rows.include", {"site": site, "everyone": False}, ["input.patients"], dialect
    )
    assert where == expected


def test_compile_filter_always_and_never(backend: PolicyBackend) -> None:
    backend.load(first_bundle(), STATE)
    assert backend.compile_filter("t.rows.include", {"everyone": True}, ["input.patients"], "sqlite") == ""
    only_oslo = (
        'package t.rows\n\ninclude if {\n\tinput.patients.site == input.site\n\tinput.site == "Oslo"\n}\n'
    )
    backend.load(PolicyBundle({"t/rows.rego": only_oslo}), {})
    assert (
        backend.compile_filter("t.rows.include", {"site": "Bergen"}, ["input.patients"], "postgresql") is None
    )
    assert (
        backend.compile_filter("t.rows.missing", {"site": "Oslo"}, ["input.patients"], "postgresql") is None
    )


def test_both_backends_agree_on_every_filter(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    remote, embedded = make_server_backend(opa_test_server), EmbeddedOpaBackend()
    try:
        for chosen in (embedded, remote):
            chosen.load(first_bundle(), STATE)
        for site in ("Oslo", "Tromsø", "a'b\\c", ""):
            for everyone in (False, True):
                for dialect in ("postgresql", "sqlite"):
                    args = (
                        "t.rows.include",
                        {"site": site, "everyone": everyone},
                        ["input.patients"],
                        dialect,
                    )
                    assert embedded.compile_filter(*args) == remote.compile_filter(*args)  # type: ignore[arg-type]
    finally:
        embedded.close()


BROKEN = {
    "parse error": {"t/access.rego": "package t.access\n\nallow if {\n"},
    "undefined function": {"t/access.rego": "package t.access\n\nallow if data.t.lib.nope(input)\n"},
    "two default rules": {
        "t/access.rego": ACCESS,
        "t/more.rego": "package t.access\n\ndefault allow := true\n",
    },
}


@pytest.mark.parametrize("problem", sorted(BROKEN))
def test_a_bundle_that_does_not_compile_is_refused_and_the_previous_one_answers(
    backend: PolicyBackend, problem: str
) -> None:
    backend.load(first_bundle(), STATE)
    broken = PolicyBundle({**BROKEN[problem], "t/data.json": '{"purposes": []}'})
    with pytest.raises(PolicyEngineError):
        backend.load(broken, {"revoked": []})
    assert backend.evaluate("t.access.allow", RESEARCH) is True
    assert backend.evaluate("t.purposes", None) == ["research", "education"]
    assert backend.evaluate("connector.state", None) == STATE
    assert backend.evaluate("t.rows.include", {"everyone": True}) is True
    backend.check()


# -- the OPA server backend: what it does on the server ------------------------------------------


def test_policy_ids_carry_the_prefix_and_stay_url_safe() -> None:
    assert policy_id("connector/purposes.rego") == "imaging-connector/connector/purposes.rego"
    odd = policy_id("dpo drafts/100% sure?.rego")
    assert odd.startswith(POLICY_ID_PREFIX)
    assert all(ch.isalnum() or ch in "._/-" for ch in odd)
    assert odd != policy_id("dpo drafts/100_ sure_.rego")
    assert ".." not in policy_id("../escape.rego").split("/")


def test_load_pushes_prefixed_modules_and_replaces_the_data_root(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    opa_test_server.put_policy("other-app/authz.rego", b"package other\n\nallow := true\n")
    opa_test_server.put_policy(POLICY_ID_PREFIX + "old/left-over.rego", b"package old\n\nx := 1\n")
    opa_test_server.put_data(["stale"], {"from": "an earlier run"}, False)
    with make_server_backend(opa_test_server) as remote:
        remote.load(first_bundle(), STATE)
    assert set(opa_test_server.policies()) == {
        "other-app/authz.rego",  # not ours: kept
        HEALTH_POLICY_ID,
        POLICY_ID_PREFIX + "t/access.rego",
        POLICY_ID_PREFIX + "t/rows.rego",
    }
    assert opa_test_server.policies()[POLICY_ID_PREFIX + "t/access.rego"] == ACCESS
    assert opa_test_server.data() == {
        "t": {"purposes": ["research", "education"], "min_age": 18},
        "connector": {"state": STATE},
    }


def test_a_refused_bundle_leaves_the_server_as_it_was(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    with make_server_backend(opa_test_server) as remote:
        remote.load(first_bundle(), STATE)
        before_policies, before_data = opa_test_server.policies(), opa_test_server.data()
        # "t/access.rego" changes and installs first, "t/new.rego" is new, "t/rows.rego" goes; then
        # "t/x.rego" does not parse, so all of that must be undone.
        broken = PolicyBundle(
            {
                "t/access.rego": ACCESS.replace("education", "x"),
                "t/new.rego": "package t.new\n\ny := 2\n",
                "t/x.rego": "package t.x\n\nz if {\n",
            }
        )
        with pytest.raises(PolicyEngineError, match=r"refused the bundle: .*t/x\.rego.*rego_parse_error"):
            remote.load(broken, {})
        assert opa_test_server.policies() == before_policies
        assert opa_test_server.data() == before_data
        assert remote.evaluate("t.rows.include", {"everyone": True}) is True


def test_a_failed_data_push_puts_the_previous_modules_back(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    with make_server_backend(opa_test_server) as remote:
        remote.load(first_bundle(), STATE)
        before = opa_test_server.policies()
        opa_test_server.inject_failure = lambda method, path: method == "PUT" and path.startswith("/v1/data")
        with pytest.raises(PolicyEngineError, match="replacing the data document"):
            remote.load(PolicyBundle({"t/access.rego": "package t.access\n\nallow := true\n"}), {})
        opa_test_server.inject_failure = None
        assert opa_test_server.policies() == before
        assert remote.evaluate("t.access.allow", {"purpose": "advertising"}) is False


def test_when_the_old_bundle_cannot_be_put_back_every_answer_fails_until_a_load(
    opa_test_server: OpaRestTestServer,
    make_server_backend: MakeBackend,
) -> None:
    with make_server_backend(opa_test_server) as remote:
        remote.load(first_bundle(), STATE)
        # The server breaks while installing "t/rows.rego" and stays broken: nothing can be put back.
        broken = threading.Event()

        def failing(method: str, path: str) -> bool:
            if path.endswith("t/rows.rego"):
                broken.set()
            return broken.is_set()

        opa_test_server.inject_failure = failing
        changed = PolicyBundle(
            {"t/access.rego": ACCESS.replace("education", "x"), "t/rows.rego": "package t.r\n"}
        )
        with pytest.raises(PolicyEngineError, match="putting the previous bundle back failed too"):
            remote.load(changed, STATE)
        opa_test_server.inject_failure = None
        with pytest.raises(PolicyEngineError, match="partly installed"):
            remote.evaluate("t.access.allow", RESEARCH)
        with pytest.raises(PolicyEngineError, match="partly installed"):
            remote.compile_filter("t.rows.include", {"everyone": True}, ["input.patients"], "sqlite")
        with pytest.raises(PolicyEngineError, match="partly installed"):
            remote.check()
        remote.load(first_bundle(), STATE)
        assert remote.evaluate("t.access.allow", RESEARCH) is True


def test_check_installs_its_health_module_when_missing(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    with make_server_backend(opa_test_server) as remote:
        remote.check()
    assert HEALTH_POLICY_ID in opa_test_server.policies()


def test_bundle_data_must_leave_connector_state_to_the_connector(
    backend: PolicyBackend, opa_test_server: OpaRestTestServer
) -> None:
    bundle = PolicyBundle({"t/access.rego": ACCESS, "connector/data.json": '{"state": {"revoked": []}}'})
    with pytest.raises(BundleError, match=r"connector\.state"):
        backend.load(bundle, STATE)
    assert opa_test_server.policies() == {}


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1:8181",
        "http://127.0.0.1:8181/v1",
        "http://user:pw@127.0.0.1:8181",
        "http://:8181",
        "nonsense",
    ],
)
def test_a_bad_server_url_is_refused(url: str) -> None:
    with pytest.raises(PolicyEngineError, match="URL"):
        OpaServerBackend(url)


def test_bad_paths_and_dialects_are_refused_before_any_request(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend
) -> None:
    with make_server_backend(opa_test_server) as remote:
        for path in ("", "t..access", "t/access", "../policies", "t.access?x=1"):
            with pytest.raises(PolicyEngineError, match="not a policy document path"):
                remote.evaluate(path, None)
        with pytest.raises(PolicyEngineError, match="dialect"):
            remote.compile_filter("t.rows.include", {}, ["input.patients"], "oracle")  # type: ignore[arg-type]


# -- the OPA server backend: fail closed ----------------------------------------------------------


def _every_operation_fails(remote: OpaServerBackend, match: str) -> None:
    calls = {
        "load": lambda: remote.load(first_bundle(), STATE),
        "set_state": lambda: remote.set_state(STATE),
        "evaluate": lambda: remote.evaluate("t.access.allow", RESEARCH),
        "compile_filter": lambda: remote.compile_filter(
            "t.rows.include", {"site": "Oslo"}, ["input.patients"], "postgresql"
        ),
        "check": remote.check,
    }
    for name, call in calls.items():
        with pytest.raises(PolicyEngineError, match=match):
            call()
        assert name  # each operation raised, none answered


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_that_is_down_fails_every_operation() -> None:
    with OpaServerBackend(f"http://127.0.0.1:{_closed_port()}", timeout=5, retries=0) as remote:
        _every_operation_fails(remote, r"unreachable|did not answer GET /health")


@pytest.mark.parametrize("token", ["wrong-token", None])
def test_a_wrong_or_missing_token_fails_every_operation(
    opa_test_server: OpaRestTestServer, make_server_backend: MakeBackend, token: str | None
) -> None:
    with make_server_backend(opa_test_server, token=token) as remote:
        _every_operation_fails(remote, r"unauthorized|401|GET /health")
    assert opa_test_server.policies() == {}


@contextmanager
def _silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])


def test_a_server_that_never_answers_times_out() -> None:
    with (
        _silent_listener() as port,
        OpaServerBackend(f"http://127.0.0.1:{port}", timeout=0.2, retries=0) as remote,
    ):
        _every_operation_fails(remote, r"timed out|did not answer GET /health")


@contextmanager
def _canned_server(status: int, body: bytes, content_type: str = "application/json") -> Iterator[str]:
    """A plain HTTP server (not OPA) that answers every request with the same status and body."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<html>a proxy's login page</html>"),
        (200, b"[1, 2, 3]"),
        (200, b""),
        (502, b"Bad Gateway"),
        (500, b'{"code": "internal_error", "message": "storage failed"}'),
    ],
)
def test_answers_that_are_not_opa_fail_every_operation(status: int, body: bytes) -> None:
    with _canned_server(status, body) as url, OpaServerBackend(url, timeout=5, retries=0) as remote:
        _every_operation_fails(remote, "OPA server")


@pytest.mark.parametrize(
    "body",
    [
        b'{"result": {"query": 42}}',
        b'{"result": {"query": {"type": "ucast"}}}',
        b'{"result": "WHERE 1 = 1"}',
        b'{"result": [["WHERE 1 = 1"]]}',
    ],
)
def test_a_malformed_filter_answer_is_an_error_not_a_filter(body: bytes) -> None:
    with (
        _canned_server(200, body) as url,
        OpaServerBackend(url, timeout=5, retries=0) as remote,
        pytest.raises(PolicyEngineError),
    ):
        remote.compile_filter("t.rows.include", {}, ["input.patients"], "postgresql")


def test_an_evaluation_answer_that_is_not_an_object_is_an_error() -> None:
    with (
        _canned_server(200, b"[true]") as url,
        OpaServerBackend(url, timeout=5, retries=0) as remote,
        pytest.raises(PolicyEngineError, match="answered evaluating"),
    ):
        remote.evaluate("t.access.allow", RESEARCH)


def test_the_test_server_speaks_opa_errors(opa_test_server: OpaRestTestServer) -> None:
    headers = {"Authorization": f"Bearer {opa_test_server.token}"}
    with httpx.Client(base_url=opa_test_server.url, headers=headers) as client:
        refused = client.put("/v1/policies/x.rego", content=b"package x\n\nallow if {\n")
        assert refused.status_code == 400
        assert refused.json()["code"] == "invalid_parameter"
        assert refused.json()["errors"][0]["code"] == "rego_parse_error"
        assert client.get("/v1/policies/nope.rego").status_code == 404
        assert client.delete("/v1/policies/nope.rego").json()["code"] == "resource_not_found"
        assert client.put("/v1/data/a/b", json={"c": 1}).status_code == 204
        assert client.get("/v1/data/a").json() == {"result": {"b": {"c": 1}}}
        assert client.post("/v1/data/a/zzz", json={"input": {}}).json() == {}
        assert client.put("/v1/data/a/b/c/d", json=1).status_code == 404  # a number is no folder
        unsupported = client.post("/v1/compile/a", json={}, headers={"Accept": "application/xml"})
        assert unsupported.status_code == 400
        assert client.get("/health", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_embedded_engine_claims_python_314_yet_runs_here() -> None:
    # The wheel's metadata claims Python >= 3.14; it is installed with --ignore-requires-python and
    # runs on the Python the connector supports (see pyproject's requires-python).
    metadata = importlib.metadata.metadata("opa-golib-python-bindings")
    assert metadata["Requires-Python"].replace(" ", "") == ">=3.14"
    assert sys.version_info < (3, 14)
    engine = EmbeddedOpaBackend()
    try:
        engine.load(PolicyBundle({"p.rego": "package p\n\nyes := true\n"}), {})
        assert engine.evaluate("p.yes", None) is True
    finally:
        engine.close()
