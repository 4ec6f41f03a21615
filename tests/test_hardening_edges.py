"""Issue #14 findings 8 and 9: peers cannot aim the provider anywhere, JSON bodies are bounded
before parsing, every error carries this request's id, the data directory is private, and a bad
dataset name is a one-line error everywhere.

The provider runs in-process (FastAPI's TestClient) on a real data directory with an ingested,
published dataset; the consumer's runtime mints real peer tokens, and a plain HTTP listener on
127.0.0.1 stands in for the consumer's DSP endpoint (and, on another port, for a victim service).
"""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from connector.api.app import create_app
from connector.cli import app as cli_app
from connector.dataspace import messages as m
from connector.dataspace.identity import peer_token
from connector.dataspace.models import Agreement, Negotiation, Transfer
from connector.dataspace.trust import TrustList, callback_problem
from connector.local_connector import free_port
from connector.runtime import Runtime, build_runtime
from connector.settings import load_settings
from tests.dsp_connectors import DATASET, Pair, prepare_pair

DEEP = 50_000


class Listener:
    """A bare HTTP server on 127.0.0.1 that records every request it gets and answers 200."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[str, str]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                seen.append(("POST", self.path))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    # Two real connector processes; no official schema is read here, so this runs on a bare clone too.
    return prepare_pair(tmp_path_factory.mktemp("edges"), patients=2)


@pytest.fixture(scope="module")
def provider(pair: Pair) -> Iterator[Runtime]:
    runtime = pair.provider.runtime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def consumer(pair: Pair) -> Iterator[Runtime]:
    runtime = pair.consumer.runtime()
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def dsp_client(provider: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(provider), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def peer_endpoint(pair: Pair) -> Iterator[Listener]:
    """The consumer's own (trusted) DSP address: the consumer is not running, so we listen there."""
    listener = Listener(pair.consumer.port)
    yield listener
    listener.close()


@pytest.fixture
def victim() -> Iterator[Listener]:
    """Some other service on the same host that a peer would like the provider to hit."""
    listener = Listener(free_port())
    yield listener
    listener.close()


def _post_as_consumer(
    client: TestClient, consumer: Runtime, pair: Pair, path: str, body: Any, **claims: Any
) -> Any:
    token = peer_token(consumer, pair.provider.connector_id, claims)
    return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def _offer(client: TestClient, consumer: Runtime, pair: Pair) -> tuple[str, dict[str, Any]]:
    answer = _post_as_consumer(client, consumer, pair, "/dsp/catalog/request", m.catalog_request())
    assert answer.status_code == 200, answer.text
    dataset = answer.json()["dataset"][0]
    return dataset["@id"], {**dataset["hasPolicy"][0], "target": dataset["@id"]}


def _count(runtime: Runtime, model: Any) -> int:
    with runtime.sessions() as session:
        return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def _bad_callbacks(pair: Pair, victim: Listener) -> list[str]:
    base = pair.consumer.dsp  # http://127.0.0.1:PORT/dsp
    host = f"127.0.0.1:{pair.consumer.port}"
    return [
        f"http://127.0.0.1:{victim.port}/dsp",  # another port on the same host
        f"http://localhost:{pair.consumer.port}/dsp",  # another host name
        f"https://{host}/dsp",  # another scheme
        f"http://{host}/elsewhere",  # outside the base path
        f"http://{host}/dspx",  # a prefix that is not a path segment
        f"http://{host}/dsp/../admin",  # dot segments climbing out
        f"http://{host}/dsp/%2e%2e/admin",  # ... even encoded
        f"http://evil@{host}/dsp",  # userinfo
        f"http://{host}@127.0.0.1:{victim.port}/dsp",  # userinfo that hides the real host
        base + "#fragment",
        base + "?x=1",
        "file:///etc/passwd",
        "not a url",
    ]


def test_contract_request_with_a_callback_elsewhere_is_refused_and_nothing_is_sent(
    dsp_client: TestClient, provider: Runtime, consumer: Runtime, pair: Pair, victim: Listener
) -> None:
    _, offer = _offer(dsp_client, consumer, pair)
    before = _count(provider, Negotiation)
    for i, callback in enumerate(_bad_callbacks(pair, victim)):
        message = m.contract_request(f"urn:uuid:consumer-evil-{i}", offer, callback)
        answer = _post_as_consumer(dsp_client, consumer, pair, "/dsp/negotiations/request", message)
        assert answer.status_code == 400, (callback, answer.text)
        body = answer.json()
        assert body["@type"] == "ContractNegotiationError"
        assert body["code"] == "invalid_callback", body
        assert body["reason"] and all(callback not in reason for reason in body["reason"])
    assert _count(provider, Negotiation) == before
    assert victim.requests == []


def test_contract_request_with_the_peers_own_address_still_works(
    dsp_client: TestClient, provider: Runtime, consumer: Runtime, pair: Pair, peer_endpoint: Listener
) -> None:
    _, offer = _offer(dsp_client, consumer, pair)
    message = m.contract_request("urn:uuid:consumer-good-1", offer, pair.consumer.dsp + "/")
    answer = _post_as_consumer(dsp_client, consumer, pair, "/dsp/negotiations/request", message)
    assert answer.status_code == 201, answer.text
    # TestClient runs the follow-up before returning: the provider answered at the trusted address.
    assert peer_endpoint.requests and all(path.startswith("/dsp/") for _, path in peer_endpoint.requests)


def _finalized_agreement(provider: Runtime, pair: Pair, agreement_id: str) -> None:
    """A finalized negotiation and its agreement with the consumer, stored as the provider would."""
    now = "2026-01-01T00:00:00Z"
    with provider.sessions() as session, session.begin():
        session.add(
            Negotiation(
                pid=f"urn:uuid:neg-{agreement_id}",
                role="provider",
                peer_pid="urn:uuid:c",
                peer=pair.consumer.connector_id,
                peer_address=pair.consumer.dsp,
                state="FINALIZED",
                dataset=DATASET,
                target="urn:x",
                offer="{}",
                created_at=now,
                updated_at=now,
                deadline=1e18,
            )
        )
        session.add(
            Agreement(
                id=agreement_id,
                negotiation=f"urn:uuid:neg-{agreement_id}",
                role="provider",
                provider=pair.provider.connector_id,
                consumer=pair.consumer.connector_id,
                dataset=DATASET,
                target="urn:x",
                purpose="ai-development",
                formats=json.dumps([m.ENCRYPTED_PULL, "ComputeToData"]),
                document="{}",
                signature="",
                valid_until=time.time() + 3600,
                created_at=now,
            )
        )


def test_transfer_request_with_a_callback_elsewhere_is_refused_and_nothing_is_sent(
    dsp_client: TestClient, provider: Runtime, consumer: Runtime, pair: Pair, victim: Listener
) -> None:
    _finalized_agreement(provider, pair, "urn:uuid:agreement-edges-1")
    before = _count(provider, Transfer)
    for i, callback in enumerate(_bad_callbacks(pair, victim)):
        message = {
            "@context": m.CONTEXT,
            "@type": "TransferRequestMessage",
            "consumerPid": f"urn:uuid:transfer-evil-{i}",
            "agreementId": "urn:uuid:agreement-edges-1",
            "format": "ComputeToData",
            "callbackAddress": callback,
        }
        answer = _post_as_consumer(dsp_client, consumer, pair, "/dsp/transfers/request", message)
        assert answer.status_code == 400, (callback, answer.text)
        assert answer.json()["@type"] == "TransferError"
        assert answer.json()["code"] == "invalid_callback"
    assert _count(provider, Transfer) == before
    assert victim.requests == []


def test_a_peer_without_a_dsp_address_on_the_trust_list_cannot_name_a_callback() -> None:
    trust = TrustList([])
    assert callback_problem(None, "http://127.0.0.1:1/dsp") is not None
    assert trust.get("x") is None
    from connector.dataspace.trust import Participant

    silent = Participant("urn:p", "Org", "BE", {}, None, "")
    assert callback_problem(silent, "http://127.0.0.1:1/dsp") is not None
    known = Participant("urn:p", "Org", "BE", {}, None, "https://peer.example:8443/api/dsp")
    assert callback_problem(known, "https://peer.example:8443/api/dsp") is None
    assert callback_problem(known, "https://PEER.example:8443/api/dsp/") is None
    assert callback_problem(known, "https://peer.example:8443/api/dsp/callbacks/1") is None
    assert callback_problem(known, "https://peer.example/api/dsp") is not None  # default port 443
    assert callback_problem(known, "https://peer.example:8443/api/dsp/./../x") is not None


def _deep(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


def test_deep_json_to_dsp_is_refused_before_the_token_check(dsp_client: TestClient) -> None:
    for path, kind in (
        ("/dsp/negotiations/request", "ContractNegotiationError"),
        ("/dsp/transfers/request", "TransferError"),
        ("/dsp/catalog/request", "CatalogError"),
    ):
        # No token at all: the depth is refused first (a 401 would mean the parser ran after auth).
        answer = dsp_client.post(path, content=_deep(), headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        body = answer.json()
        assert body["@type"] == kind and body["code"] == "json_too_deep"
        # Deep nesting inside a string is no nesting at all.
        shallow = json.dumps({"@type": "x", "s": "[" * 5000})
        answer = dsp_client.post(path, content=shallow, headers={"content-type": "application/json"})
        assert answer.status_code == 401


def test_deep_json_to_the_api_is_a_400_with_a_reason(client: TestClient, token_for: Any) -> None:
    from connector.identity.roles import Role
    from tests.conftest import bearer

    headers = {**bearer(token_for(Role.DPO)), "content-type": "application/json"}
    for body in (_deep(), b'{"a":' * DEEP + b"1" + b"}" * DEEP, b"[" * DEEP):
        answer = client.post("/v1/policy/check", content=body, headers=headers)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"] == "json_too_deep"
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
    # Without a token too: the limit comes before anything reads the body.
    answer = client.post("/v1/policy/check", content=_deep(), headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"] == "json_too_deep"
    # Moderate nesting still reaches the route (and its validation).
    fine = client.post("/v1/policy/check", content=b"[" * 20 + b"]" * 20, headers=headers)
    assert fine.status_code == 422


def test_a_body_of_escaped_quotes_is_scanned_once_not_once_per_quote(
    client: TestClient, token_for: Any
) -> None:
    """A regex that could fail at a quote is retried from every later quote: 1 MiB of unterminated
    escaped quotes behind enough brackets to pass the quick count took hours on one request (the
    event loop held). Now it is one linear pass; brackets before the string still count."""
    from connector.identity.roles import Role
    from tests.conftest import bearer

    hostile = b"[" * 70 + b'"' + b'\\"' * 340_000
    headers = {**bearer(token_for(Role.DPO)), "content-type": "application/json"}
    answer = client.post("/v1/policy/check", content=hostile, headers=headers)
    assert answer.status_code == 400 and answer.json()["error"] == "json_too_deep"
    shallow = b"[" + b"[]," * 70 + b'"' + b'\\"' * 340_000 + b"\\"  # depth 2, a lone backslash at the end
    answer = client.post("/v1/policy/check", content=shallow, headers=headers)
    assert answer.status_code == 422, answer.text  # reaches the route, whose parser says why


def test_every_error_body_carries_this_requests_id(client: TestClient, token_for: Any) -> None:
    from connector.identity.roles import Role
    from tests.conftest import bearer

    headers = bearer(token_for(Role.DPO))
    answers = [
        client.get("/v1/me"),  # 401
        client.get("/no/such/route"),  # 404
        client.post("/v1/policy/check", json={"files": "not a mapping"}, headers=headers),  # 422
        client.post("/v1/policy/check", content=_deep(), headers={"content-type": "application/json"}),
        client.get("/v1/me", headers={"x-request-id": "caller-id-1"}),
    ]
    assert [a.status_code for a in answers] == [401, 404, 422, 400, 401]
    ids = set()
    for answer in answers:
        assert answer.json()["request_id"] == answer.headers["x-request-id"], answer.text
        ids.add(answer.headers["x-request-id"])
    assert len(ids) == len(answers)  # never a stale id from an earlier request
    assert answers[-1].headers["x-request-id"] == "caller-id-1"


def test_an_unexpected_error_carries_this_requests_id(tmp_path: Path) -> None:
    from fastapi import Depends

    from connector.api.security import public

    runtime = build_runtime(load_settings(data_dir=tmp_path / "d"))
    app = create_app(runtime)

    @app.get("/boom", dependencies=[Depends(public())])  # type: ignore[misc]
    def boom() -> None:
        raise RuntimeError("internal detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"x-request-id": "boom-1"})
    runtime.close()
    assert answer.status_code == 500
    assert answer.json()["request_id"] == "boom-1" == answer.headers["x-request-id"]
    assert "internal detail" not in answer.text


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_database_reports_and_data_folders_are_private(pair: Pair, provider: Runtime) -> None:
    data = pair.provider.data_dir
    database = data / "connector.db"
    assert database.exists() and (data / "connector.db-wal").exists()
    for path in (database, data / "connector.db-wal", data / "connector.db-shm"):
        if path.exists():
            assert _mode(path) == 0o600, path
    assert _mode(data) == 0o700
    reports = list((data / "reports").rglob("*.json"))
    assert reports
    for report in reports:
        assert _mode(report) == 0o600, report
        assert _mode(report.parent) == 0o700
    assert _mode(data / "reports") == 0o700


def test_existing_loose_modes_are_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "d"
    build_runtime(load_settings(data_dir=data)).close()
    (data / "connector.db").chmod(0o644)
    data.chmod(0o755)
    runtime = build_runtime(load_settings(data_dir=data))
    try:
        assert _mode(data / "connector.db") == 0o600
        assert _mode(data) == 0o700
        for name in ("connector.db-wal", "connector.db-shm"):
            if (data / name).exists():
                assert _mode(data / name) == 0o600
    finally:
        runtime.close()


BAD_NAMES = ["../../etc", "..", "/etc/passwd", "Upper", "a/b", "x" * 65, "-dash", ""]


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "rotate", "{}"],
        ["datasets", "show", "{}"],
        ["export", "{}", "OUT"],
        ["shred", "--dataset", "{}", "--all", "--yes"],
        ["ingest", "IN", "--dataset", "{}"],
        ["deid", "IN", "OUT", "--dataset", "{}"],
        ["publish", "{}"],
        ["catalog", "show", "{}"],
        ["catalog", "publications", "--dataset", "{}"],
        ["consent", "refused", "--dataset", "{}"],
    ],
)
@pytest.mark.parametrize("name", ["../../etc", "Upper", "a/b", ""])
def test_a_bad_dataset_name_is_one_line_and_exit_2(tmp_path: Path, args: list[str], name: str) -> None:
    (tmp_path / "IN").mkdir()
    argv = [
        a.replace("{}", name).replace("OUT", str(tmp_path / "out")).replace("IN", str(tmp_path / "IN"))
        for a in args
    ]
    result = CliRunner().invoke(cli_app, argv, env={"CONNECTOR_DATA_DIR": str(tmp_path / "data")})
    output = result.output.strip()
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(output.splitlines()) == 1, output
    assert "invalid dataset name" in output
    assert not (tmp_path / "etc").exists()


def test_the_dataset_name_rule_refuses_what_it_should() -> None:
    from connector.crypto.dataset_secrets import validate_dataset_name

    for name in BAD_NAMES:
        with pytest.raises(ValueError, match="invalid dataset name"):
            validate_dataset_name(name)
    assert validate_dataset_name("chest-ct.v2") == "chest-ct.v2"


@pytest.mark.parametrize(
    ("body", "too_deep"),
    [
        (b"[" * 64 + b"]" * 64, False),  # exactly the limit
        (b"[" * 65 + b"]" * 65, True),
        (b'{"a":' * 65 + b"1" + b"}" * 65, True),
        (b"[" * 65, True),  # unclosed: a recursive parser would still descend 65 levels
        (b"[[],[[],[[],[[]]]]]" * 3, False),  # siblings do not add up
        (b"[" + b"[]," * 1000 + b"[]]", False),  # many brackets, depth 2
        (json.dumps({"s": "[" * 500, "t": '\\"[[[[' * 100}).encode(), False),  # brackets in strings
        (b'["\\"' + b"[" * 100 + b'"]', False),  # an escaped quote does not end the string
        (b"]" * 500 + b"[" * 10, False),  # malformed, but shallow: the parser says why
    ],
)
def test_the_nesting_scan_counts_only_structure(body: bytes, too_deep: bool) -> None:
    from connector.api.middleware import json_nesting_exceeds

    assert json_nesting_exceeds(body, 64) is too_deep
