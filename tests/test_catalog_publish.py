"""Publishing catalog records to remote catalogs, against a real HTTP catalog server.

Every test talks over real HTTP to `tests.remote_catalog_server` (uvicorn on 127.0.0.1); nothing
here mocks the network. Timeouts and backoffs are tiny so the file runs in seconds; tests must
never reach a host outside the loopback interface.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from catalog.publish import (
    PRESETS,
    PublishOutcome,
    RemoteCatalog,
    content_digest,
    parse_remote_catalogs,
    publish,
    record_url,
)

if TYPE_CHECKING:  # imported for annotations only: pytest loads the module below as a plugin
    from tests.remote_catalog_server import RemoteCatalogServer

pytest_plugins = ["tests.remote_catalog_server"]

TOKEN = "s3cr3t-T0ken-for-tests"  # distinctive, so any leak is easy to find in a string

TURTLE = """\
@prefix dcat: <http://www.w3.org/ns/dcat#> .
@prefix dct: <http://purl.org/dc/terms/> .
@prefix adms: <http://www.w3.org/ns/adms#> .

<https://hospital.example/datasets/{id}> a dcat:Dataset ;
    dct:identifier "{id}" ;
    dct:title "Chest CT, lung nodules"@en ;
    owl:versionInfo "{version}" ;
    adms:status <http://purl.org/adms/status/{status}> .
""".replace("@prefix adms:", "@prefix owl: <http://www.w3.org/2002/07/owl#> .\n@prefix adms:")


def turtle(dataset_id: str = "ds-1", version: str = "1", status: str = "Completed") -> bytes:
    return TURTLE.format(id=dataset_id, version=version, status=status).encode()


def json_ld(dataset_id: str = "ds-1", version: str = "1", status: str = "Completed") -> bytes:
    document = {
        "@context": {
            "dcat": "http://www.w3.org/ns/dcat#",
            "dct": "http://purl.org/dc/terms/",
            "adms": "http://www.w3.org/ns/adms#",
        },
        "@id": f"https://hospital.example/datasets/{dataset_id}",
        "@type": "dcat:Dataset",
        "dct:identifier": dataset_id,
        "dct:title": {"@value": "Chest CT, lung nodules", "@language": "en"},
        "adms:status": {"@id": f"http://purl.org/adms/status/{status}"},
        "version": version,
    }
    return json.dumps(document, sort_keys=True).encode()


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def remote_for(server: RemoteCatalogServer, kind: str = "healthdata-eu", **overrides: Any) -> RemoteCatalog:
    settings: dict[str, Any] = {
        "name": f"test-{kind}",
        "url": server.url,
        "kind": kind,
        "timeout_seconds": 2.0,
        "retries": 3,
        "backoff_seconds": 0.01,
        "max_backoff_seconds": 0.05,
        "retry_after_cap_seconds": 2.0,
    }
    settings.update(overrides)
    return RemoteCatalog(**settings)


def push(
    remote: RemoteCatalog, dataset_id: str, body: bytes, version: str = "1", **kwargs: Any
) -> PublishOutcome:
    return publish(remote, dataset_id, body, record_digest=digest(body), version=version, **kwargs)


# -- publishing ---------------------------------------------------------------------------------


def test_publish_stores_the_exact_record_with_its_digest_and_version(
    remote_catalog: RemoteCatalogServer,
) -> None:
    remote = remote_for(remote_catalog)
    body = turtle()
    outcome = push(remote, "ds-1", body)

    assert outcome.ok, outcome.error
    assert (outcome.remote, outcome.action, outcome.status_code, outcome.attempts) == (
        "test-healthdata-eu",
        "publish",
        201,
        1,
    )
    assert outcome.error == ""
    assert outcome.location == f"{remote_catalog.url}/datasets/ds-1"
    assert outcome.remote_id == "remote-datasets-ds-1"
    assert json.loads(outcome.answer)["state"] == "created"

    record = remote_catalog.records["ds-1"]
    assert record["body"] == body
    assert record["media_type"] == "text/turtle"
    assert record["version"] == "1"
    assert record["digest"] == digest(body)
    assert record["status"] == "active"
    (request,) = remote_catalog.requests
    assert (request.method, request.raw_path) == ("PUT", "/datasets/ds-1")
    expected_digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert request.headers["content-digest"] == expected_digest == content_digest(body)
    assert request.headers["content-type"] == "text/turtle"
    assert "authorization" not in request.headers

    # Read back over HTTP, as a harvester would.
    read_back = httpx.get(f"{remote_catalog.url}/datasets/ds-1")
    assert read_back.status_code == 200 and read_back.content == body


def test_eucaim_preset_puts_json_ld_under_collections(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog, "eucaim")
    assert remote.media_type == "application/ld+json"  # the preset's default
    body = json_ld("lung-ct")
    outcome = push(remote, "lung-ct", body)

    assert outcome.ok and outcome.status_code == 201
    assert remote_catalog.requests[0].raw_path == "/collections/lung-ct"
    assert remote_catalog.records["lung-ct"]["collection"] == "collections"
    assert remote_catalog.records["lung-ct"]["body"] == body
    assert remote_catalog.records["lung-ct"]["media_type"] == "application/ld+json"


def test_republishing_the_same_record_is_idempotent(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog)
    body = turtle()
    first = push(remote, "ds-1", body)
    second = push(remote, "ds-1", body)

    assert first.ok and second.ok
    assert (first.status_code, second.status_code) == (201, 200)
    assert json.loads(second.answer)["state"] == "unchanged"
    assert list(remote_catalog.records) == ["ds-1"]
    assert remote_catalog.records["ds-1"]["body"] == body
    # Both pushes carried the same dedupe keys.
    keys = {(r.headers["x-record-digest"], r.headers["x-record-version"]) for r in remote_catalog.requests}
    assert keys == {(digest(body), "1")}


def test_a_new_version_replaces_the_record(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog)
    push(remote, "ds-1", turtle(version="1"))
    newer = turtle(version="2")
    outcome = push(remote, "ds-1", newer, version="2")

    assert outcome.ok and outcome.status_code == 200
    assert json.loads(outcome.answer)["state"] == "updated"
    assert list(remote_catalog.records) == ["ds-1"]
    assert remote_catalog.records["ds-1"]["body"] == newer
    assert remote_catalog.records["ds-1"]["version"] == "2"
    assert remote_catalog.records["ds-1"]["digest"] == digest(newer)


def test_a_shared_client_is_used_and_left_open(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog)
    with httpx.Client() as client:
        assert push(remote, "a", turtle("a"), client=client).ok
        assert push(remote, "b", turtle("b"), client=client).ok
        assert not client.is_closed
    assert sorted(remote_catalog.records) == ["a", "b"]


# -- withdrawing --------------------------------------------------------------------------------


def test_healthdata_eu_withdraws_by_putting_the_deprecated_record(
    remote_catalog: RemoteCatalogServer,
) -> None:
    remote = remote_for(remote_catalog)
    push(remote, "ds-1", turtle())
    deprecated = turtle(version="2", status="Deprecated")
    outcome = push(remote, "ds-1", deprecated, version="2", withdraw=True)

    assert outcome.ok and outcome.action == "withdraw"
    assert remote_catalog.requests[-1].method == "PUT"
    # Still there, still harvestable, now marked deprecated.
    assert remote_catalog.records["ds-1"]["status"] == "deprecated"
    assert remote_catalog.records["ds-1"]["body"] == deprecated
    assert httpx.get(f"{remote_catalog.url}/datasets/ds-1").content == deprecated

    assert not remote.supports_delete
    with pytest.raises(ValueError, match="harvestable"):
        push(remote, "ds-1", deprecated, withdraw=True, delete=True)
    writes = [r for r in remote_catalog.requests if r.method != "GET"]
    assert len(writes) == 2  # the refused call sent nothing


def test_eucaim_withdraws_by_delete_when_asked(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog, "eucaim")
    push(remote, "lung-ct", json_ld("lung-ct"))
    deprecated = json_ld("lung-ct", status="Deprecated")
    outcome = push(remote, "lung-ct", deprecated, withdraw=True, delete=True)

    assert outcome.ok and outcome.action == "withdraw" and outcome.status_code == 204
    request = remote_catalog.requests[-1]
    assert (request.method, request.raw_path, request.body) == ("DELETE", "/collections/lung-ct", b"")
    assert "content-digest" not in request.headers
    assert request.headers["x-record-digest"] == digest(deprecated)
    assert "lung-ct" not in remote_catalog.records and remote_catalog.deleted == ["lung-ct"]

    # Withdrawing again is harmless: the remote no longer has it, which is what was asked.
    again = push(remote, "lung-ct", deprecated, withdraw=True, delete=True)
    assert again.ok and again.status_code == 404 and again.error == ""


def test_eucaim_withdraws_by_put_when_delete_is_not_asked(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog, "eucaim")
    push(remote, "lung-ct", json_ld("lung-ct"))
    outcome = push(remote, "lung-ct", json_ld("lung-ct", "2", "Deprecated"), version="2", withdraw=True)

    assert outcome.ok and remote_catalog.requests[-1].method == "PUT"
    assert remote_catalog.records["lung-ct"]["status"] == "deprecated"


def test_delete_without_withdraw_is_a_caller_error(remote_catalog: RemoteCatalogServer) -> None:
    with pytest.raises(ValueError, match="withdraw=True"):
        push(remote_for(remote_catalog, "eucaim"), "x", json_ld("x"), delete=True)


# -- retries ------------------------------------------------------------------------------------


def test_503_twice_then_success_takes_three_attempts(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.fail_next(2, status=503)
    outcome = push(remote_for(remote_catalog), "ds-1", turtle())

    assert outcome.ok and outcome.attempts == 3 and outcome.status_code == 201
    assert [r.status for r in remote_catalog.requests] == [503, 503, 201]
    assert list(remote_catalog.records) == ["ds-1"]


def test_server_errors_until_the_last_attempt_give_a_clear_outcome(
    remote_catalog: RemoteCatalogServer,
) -> None:
    remote_catalog.fail_next(10, status=500, body="database is down")
    outcome = push(remote_for(remote_catalog, retries=2), "ds-1", turtle())

    assert not outcome.ok and outcome.attempts == 2 and outcome.status_code == 500
    assert outcome.error.startswith("the remote catalog failed (HTTP 500) on 2 attempts: ")
    assert "database is down" in outcome.error and "database is down" in outcome.answer
    assert remote_catalog.records == {}


def test_429_retry_after_is_honoured(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.fail_next(1, status=429, retry_after="1")
    waits: list[float] = []
    outcome = push(remote_for(remote_catalog), "ds-1", turtle(), sleep=waits.append)

    assert outcome.ok and outcome.attempts == 2
    assert waits == [1.0]  # the remote's delay, not the 0.01 s backoff


def test_429_retry_after_as_an_http_date(remote_catalog: RemoteCatalogServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    remote_catalog.fail_next(1, status=429, retry_after=format_datetime(when, usegmt=True))
    waits: list[float] = []
    outcome = push(
        remote_for(remote_catalog, retry_after_cap_seconds=60), "ds-1", turtle(), sleep=waits.append
    )

    assert outcome.ok and len(waits) == 1 and 27 <= waits[0] <= 30


def test_429_retry_after_is_capped(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.fail_next(1, status=429, retry_after="120")
    waits: list[float] = []
    outcome = push(
        remote_for(remote_catalog, retry_after_cap_seconds=0.3), "ds-1", turtle(), sleep=waits.append
    )

    assert outcome.ok and outcome.attempts == 2
    assert waits == [0.3]  # the cap, not the remote's 120 s


def test_persistent_throttling_is_reported(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.fail_next(10, status=429, retry_after="0")
    outcome = push(remote_for(remote_catalog), "ds-1", turtle())

    assert not outcome.ok and outcome.attempts == 3 and outcome.status_code == 429
    assert outcome.error.startswith("the remote catalog kept throttling requests (HTTP 429) over 3 attempts")


def test_422_refusal_is_not_retried_and_the_answer_is_kept(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.refuse_with(422, "dct:publisher is required")
    outcome = push(remote_for(remote_catalog), "ds-1", turtle())

    assert not outcome.ok and outcome.attempts == 1 and outcome.status_code == 422
    assert len(remote_catalog.requests) == 1
    assert json.loads(outcome.answer) == {"detail": "dct:publisher is required"}
    assert outcome.error.startswith("the remote catalog refused the record (HTTP 422): ")
    assert "dct:publisher is required" in outcome.error
    assert remote_catalog.records == {}


def test_refused_withdrawal_says_so(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.refuse_with(409, "collection is locked")
    outcome = push(remote_for(remote_catalog, "eucaim"), "x", json_ld("x"), withdraw=True, delete=True)
    assert outcome.error.startswith("the remote catalog refused the withdrawal (HTTP 409): ")


def test_a_redirect_is_not_followed_with_credentials(remote_catalog: RemoteCatalogServer) -> None:
    from tests.remote_catalog_server import RemoteCatalogServer  # already loaded as a plugin by now

    with RemoteCatalogServer() as elsewhere:
        remote_catalog.redirect_to = f"{elsewhere.url}/datasets/ds-1"
        outcome = push(remote_for(remote_catalog, token=TOKEN), "ds-1", turtle())
        assert elsewhere.requests == []  # the token never travelled to the other server

    assert not outcome.ok and outcome.status_code == 307 and outcome.attempts == 1
    assert outcome.error.startswith("the remote catalog redirected the request (HTTP 307 to ")
    assert "set its url to the final address" in outcome.error


def test_a_long_answer_is_truncated(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.refuse_with(422, "é" * 5000)
    outcome = push(remote_for(remote_catalog), "ds-1", turtle())
    assert len(outcome.answer) == 2000 and outcome.answer.startswith('{"detail":"')
    assert len(outcome.error) < 500


def test_a_record_that_does_not_parse_is_refused_by_the_remote(remote_catalog: RemoteCatalogServer) -> None:
    broken = b"@prefix dcat: <http://www.w3.org/ns/dcat#> .\n<x> a dcat:Dataset"  # no final dot
    outcome = push(remote_for(remote_catalog), "ds-1", broken)
    assert not outcome.ok and outcome.status_code == 400 and outcome.attempts == 1
    assert "does not parse" in outcome.error

    not_json = push(remote_for(remote_catalog, "eucaim"), "ds-1", b"{not json")
    assert not_json.status_code == 400 and "does not parse" in not_json.answer
    assert remote_catalog.records == {}


def test_timeout_gives_a_clear_error_after_every_attempt(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.delay_seconds = 1.0
    outcome = push(remote_for(remote_catalog, timeout_seconds=0.2, retries=3), "ds-1", turtle())

    assert not outcome.ok and outcome.status_code is None
    assert outcome.attempts == 3 and len(remote_catalog.requests) == 3
    assert outcome.error == "the remote catalog did not answer within 0.2 s (3 attempts)"


def test_unreachable_remote_gives_a_clear_error(unreachable_url: str) -> None:
    remote = RemoteCatalog(
        name="down", url=unreachable_url, kind="healthdata-eu", retries=2, backoff_seconds=0.01
    )
    outcome = push(remote, "ds-1", turtle())

    assert not outcome.ok and outcome.status_code is None and outcome.attempts == 2
    host = unreachable_url.removeprefix("http://")
    assert outcome.error.startswith(f"could not connect to the remote catalog at {host} (2 attempts)")


# -- authentication -----------------------------------------------------------------------------


def test_bearer_token_is_required_and_sent(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.require_token = TOKEN

    anonymous = push(remote_for(remote_catalog), "ds-1", turtle())
    assert not anonymous.ok and anonymous.status_code == 401 and anonymous.attempts == 1
    assert anonymous.error.startswith(
        "the remote catalog rejected the connector's credentials (HTTP 401); "
        "it wants credentials and none are configured"
    )

    wrong = push(remote_for(remote_catalog, token="not-the-token"), "ds-1", turtle())
    assert not wrong.ok and wrong.status_code == 401 and wrong.attempts == 1
    assert "check the configured bearer credentials" in wrong.error
    assert "not-the-token" not in repr(wrong)

    right = push(remote_for(remote_catalog, token=TOKEN), "ds-1", turtle())
    assert right.ok and right.status_code == 201
    assert remote_catalog.requests[-1].headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in repr(right)
    assert list(remote_catalog.records) == ["ds-1"]


def test_basic_auth_is_required_and_sent(remote_catalog: RemoteCatalogServer) -> None:
    remote_catalog.require_basic = ("hospital-a", "pa55:word")

    wrong = push(remote_for(remote_catalog, username="hospital-a", password="nope"), "ds-1", turtle())
    assert wrong.status_code == 401 and "check the configured basic credentials" in wrong.error

    right = push(remote_for(remote_catalog, username="hospital-a", password="pa55:word"), "ds-1", turtle())
    assert right.ok
    sent = remote_catalog.requests[-1].headers["authorization"]
    assert sent == "Basic " + base64.b64encode(b"hospital-a:pa55:word").decode()


def test_secrets_never_appear_in_reprs_outcomes_or_logs(
    remote_catalog: RemoteCatalogServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="catalog.publish")
    remote = remote_for(remote_catalog, token=TOKEN)
    assert TOKEN not in repr(remote) and TOKEN not in str(remote)
    assert "token='***'" in repr(remote) and "auth='bearer'" in repr(remote)
    basic = remote_for(remote_catalog, username="u", password="hunter2-password")
    assert "hunter2-password" not in repr(basic) and "password='***'" in repr(basic)

    # A careless remote echoes the credentials it was sent; the outcome must not repeat them.
    remote_catalog.refuse_with(400, f"bad Authorization: Bearer {TOKEN}")
    remote_catalog.fail_next(1, status=503)
    outcome = push(remote, "ds-1", turtle())

    assert not outcome.ok and outcome.status_code == 400
    for text in (repr(outcome), outcome.answer, outcome.error):
        assert TOKEN not in text
    assert "Bearer ***" in outcome.answer
    assert TOKEN not in caplog.text
    assert "retrying" in caplog.text  # the log did record the retry

    # The same for basic auth, whose header carries the pair base64-encoded.
    encoded = base64.b64encode(b"u:hunter2-password").decode()
    remote_catalog.refuse_with(400, f"bad Authorization: Basic {encoded}")
    echoed = push(basic, "ds-1", turtle())
    assert encoded not in echoed.answer and "Basic ***" in echoed.answer


# -- hostile dataset ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset_id", "raw_segment"),
    [
        ("../x", "..%2Fx"),
        ("a/b", "a%2Fb"),
        ("%2e%2e", "%252e%252e"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("x?y#z", "x%3Fy%23z"),
        ("é ü", "%C3%A9%20%C3%BC"),
    ],
)
def test_hostile_dataset_ids_stay_inside_their_path_segment(
    remote_catalog: RemoteCatalogServer, dataset_id: str, raw_segment: str
) -> None:
    outcome = push(remote_for(remote_catalog), dataset_id, turtle("h"))

    assert outcome.ok, outcome.error
    (request,) = remote_catalog.requests
    assert request.raw_path == f"/datasets/{raw_segment}"
    assert request.dataset_id == dataset_id
    assert list(remote_catalog.records) == [dataset_id]


def test_record_url_keeps_the_base_path_and_one_segment() -> None:
    remote = RemoteCatalog(name="node", url="https://node.example/api/v2/", kind="healthdata-eu")
    assert remote.url == "https://node.example/api/v2"
    assert record_url(remote, "../../admin") == "https://node.example/api/v2/datasets/..%2F..%2Fadmin"
    eucaim = RemoteCatalog(name="eu", url="https://eucaim.example", kind="eucaim")
    assert record_url(eucaim, "a/b") == "https://eucaim.example/collections/a%2Fb"
    with pytest.raises(ValueError, match="non-empty"):
        record_url(remote, "")


def test_header_unsafe_digest_or_version_is_a_caller_error(remote_catalog: RemoteCatalogServer) -> None:
    remote = remote_for(remote_catalog)
    with pytest.raises(ValueError, match="version"):
        publish(remote, "x", turtle(), record_digest="sha256:ab", version="1\r\nX-Evil: 1")
    with pytest.raises(ValueError, match="record_digest"):
        publish(remote, "x", turtle(), record_digest="", version="1")
    assert remote_catalog.requests == []


# -- configuration ------------------------------------------------------------------------------


def test_parse_remote_catalogs_builds_both_kinds() -> None:
    remotes = parse_remote_catalogs(
        [
            {
                "name": "be-node",
                "url": "https://hdeu.example.be/api",
                "kind": "healthdata-eu",
                "token_env": "T",
            },
            {
                "name": "eucaim",
                "url": "https://catalog.eucaim.example",
                "kind": "eucaim",
                "media_type": "text/turtle",
                "username": "hospital-a",
                "password": "pw",
                "timeout_seconds": 5,
                "retries": 4,
            },
        ],
        environ={"T": TOKEN},
    )
    be, eu = remotes
    assert (be.kind, be.media_type, be.auth_kind, be.token) == (
        "healthdata-eu",
        "text/turtle",
        "bearer",
        TOKEN,
    )
    assert (eu.kind, eu.media_type, eu.auth_kind, eu.retries, eu.timeout_seconds) == (
        "eucaim",
        "text/turtle",
        "basic",
        4,
        5,
    )
    assert set(PRESETS) == {"healthdata-eu", "eucaim"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "x", "url": "https://a.example", "kind": "dcat-ap"}, "unknown kind 'dcat-ap'"),
        ({"name": "x", "url": "ftp://a.example", "kind": "eucaim"}, "must be an http:// or https:// URL"),
        ({"name": "x", "url": "a.example/api", "kind": "eucaim"}, "must be an http:// or https:// URL"),
        (
            {
                "name": "x",
                "url": "https://a.example",
                "kind": "eucaim",
                "token": "t",
                "username": "u",
                "password": "p",
            },
            "either a bearer token or basic auth",
        ),
        ({"name": "x", "url": "https://a.example", "kind": "eucaim", "username": "u"}, "needs both"),
        ({"name": "x", "url": "https://u:p@a.example", "kind": "eucaim"}, "must not contain credentials"),
        ({"name": "x", "url": "http://a.example", "kind": "eucaim", "token": "t"}, "only be sent over https"),
        ({"name": "x", "url": "https://a.example", "kind": "eucaim", "media_type": "text/csv"}, "media_type"),
        ({"name": "x", "url": "https://a.example", "kind": "eucaim", "retries": 0}, "'retries'"),
        (
            {"name": "x", "url": "https://a.example", "kind": "eucaim", "timeout_seconds": 0},
            "'timeout_seconds'",
        ),
        ({"name": "x", "url": "https://a.example", "kind": "eucaim", "tokn": "t"}, "unknown setting.*tokn"),
        ({"name": "x", "url": "https://a.example", "kind": "eucaim", "token_env": "MISSING"}, "MISSING"),
        ({"url": "https://a.example", "kind": "eucaim"}, "missing 'name'"),
        ({"name": "", "url": "https://a.example", "kind": "eucaim"}, "non-empty 'name'"),
        (
            {"name": "x", "url": "https://a.example", "kind": "eucaim", "token": "two words"},
            "printable ASCII",
        ),
    ],
)
def test_parse_remote_catalogs_rejects_bad_config(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_remote_catalogs([entry], environ={})


def test_parse_remote_catalogs_rejects_duplicates_and_non_lists() -> None:
    entry = {"name": "x", "url": "https://a.example", "kind": "eucaim"}
    with pytest.raises(ValueError, match="used by another"):
        parse_remote_catalogs([entry, dict(entry)])
    with pytest.raises(ValueError, match="must be a list"):
        parse_remote_catalogs(entry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table of settings"):
        parse_remote_catalogs(["https://a.example"])  # type: ignore[list-item]
    # Plain http with credentials is fine to a loopback sidecar.
    (local,) = parse_remote_catalogs([{**entry, "url": "http://127.0.0.1:9", "token": "t"}])
    assert local.auth_kind == "bearer"
