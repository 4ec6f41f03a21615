"""The object store on S3 (MinIO, SeaweedFS, AWS or any S3-compatible server), with the minio SDK.

`S3ObjectStore` implements the same `ObjectStore` protocol as the local folder store (put,
stage, publish, discard, get, exists, delete, check) plus streaming: `put_stream` (multipart
upload for large objects or unknown lengths, several parts in flight at once), `get_stream`
(bytes chunks) and `list` (keys under a prefix).

What it does:
- validates every key with `validate_key` before any request is sent;
- creates its bucket on first use when it is missing (`ensure_bucket`);
- retries transient failures (connection errors, timeouts, HTTP 5xx, SlowDown) with exponential
  backoff and jitter, a bounded number of attempts; client errors (4xx) are never retried;
- relies on S3 PUT semantics for writes: a re-put of a key replaces the object atomically, a
  reader sees the old object or the new one, never a mix, and an acknowledged PUT is durable
  (so `stage` is a put and `publish` has nothing to do); multipart uploads become visible only
  when completed, and on any failure the upload is aborted once its parts in flight have
  finished, so no part is left behind;
- bounds memory in `put_stream`: at most `parallel` parts uploading plus the one being read;
- is safe to use in a forked child process (ingest workers): the child gets its own connections;
- turns every failure into `ObjectStoreError` with a message saying what failed and why.

What it must never do: put the secret key in a message, a log line or a repr; retry a request the
server refused as invalid or unauthorised; accept a key that `validate_key` refuses; decide what
may be stored (it stores the bytes it is given, already encrypted upstream).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from connector.storage.objects import ObjectStoreError, Staged, validate_key

__all__ = ["S3ObjectStore"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000  # S3's limit per multipart upload
# put_stream's parts: S3's smallest keeps memory low, and on a local server larger parts were no
# faster. With the part being read, memory stays under (DEFAULT_PARALLEL_PARTS + 1) * part size
# (25 MiB at the defaults), whatever the object's size. A known length too large for 10,000
# parts of this size gets larger parts; a stream of unknown length can be up to 50 GB.
DEFAULT_PART_SIZE = MIN_PART_SIZE
DEFAULT_PARALLEL_PARTS = 4
CHUNK_SIZE = 1 * MiB

# S3 error codes that mean "try again later", whatever status the server sent them with.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "Throttling", "ThrottlingException"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "ResourceNotFound"})
_AUTH_CODES = frozenset(
    {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

T = TypeVar("T")


class _Missing(Exception):
    """Internal: the object does not exist (never retried, never leaves this module)."""


class _Changed(Exception):
    """Internal: the object's ETag changed between two ranged reads."""


class S3ObjectStore:
    """Objects as S3 objects in one bucket, optionally under a key prefix."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = True,
        region: str | None = None,
        prefix: str = "",
        *,
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        if "://" in endpoint or "/" in endpoint or not endpoint:
            raise ObjectStoreError(
                f"S3 endpoint {endpoint!r} must be host[:port], without scheme or path "
                "(use secure=False for plain HTTP)"
            )
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise ObjectStoreError(f"invalid S3 bucket name {bucket!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.endpoint = endpoint
        self.bucket = bucket
        self.secure = secure
        self.region = region
        self.prefix = validate_key(prefix.rstrip("/")) + "/" if prefix else ""
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._access_key = access_key
        self._secret = secret_key
        self._timeouts = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        self._client = self._connect()
        # A forked child (an ingest worker) must not share the parent's pooled sockets: two
        # processes writing requests into one connection would corrupt both. The hook holds only
        # a weak reference, so it never keeps a store alive.
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: S3ObjectStore._reconnect_after_fork(reference))

    def _connect(self) -> Minio:
        # Retries happen here, per operation, so the SDK's transport must not retry on its own.
        http = urllib3.PoolManager(
            timeout=self._timeouts,
            maxsize=DEFAULT_PARALLEL_PARTS + 6,  # the parts in flight and a few small requests
            retries=False,
            cert_reqs="CERT_REQUIRED",
            # a private CA in SSL_CERT_FILE, else the system's trust store (urllib3's default)
            ca_certs=os.environ.get("SSL_CERT_FILE") or None,
        )
        try:
            return Minio(
                self.endpoint,
                access_key=self._access_key,
                secret_key=self._secret,
                secure=self.secure,
                region=self.region,
                http_client=http,
            )
        except ValueError as exc:
            reason = self._scrub(str(exc))
            raise ObjectStoreError(f"S3 endpoint {self.endpoint!r} is not usable: {reason}") from None

    @staticmethod
    def _reconnect_after_fork(reference: weakref.ref[S3ObjectStore]) -> None:
        store = reference()
        if store is None:
            return
        store._bucket_lock = threading.Lock()  # another thread may have held it at the fork
        # The endpoint was usable in the parent; were it not now, the first request would say so.
        with contextlib.suppress(ObjectStoreError):
            store._client = store._connect()

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return f"S3ObjectStore({scheme}://{self.endpoint}/{self.bucket}/{self.prefix})"

    # -- plumbing ---------------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        if isinstance(exc, S3Error):
            status = exc.response.status if exc.response is not None else 0
            return exc.code in _TRANSIENT_CODES or status >= 500
        if isinstance(exc, ServerError):
            return exc.status_code >= 500
        if isinstance(exc, InvalidResponseError):
            code = getattr(exc, "_code", 0)
            return isinstance(code, int) and code >= 500
        # connection refused/reset, timeouts, truncated bodies
        return isinstance(exc, (Urllib3HTTPError, ConnectionError, TimeoutError))

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, S3Error):
            if exc.code in _AUTH_CODES:
                text = (
                    f"access denied ({exc.code}): check the access key, secret key and the "
                    f"credentials' rights on the bucket"
                )
            else:
                text = f"{exc.code}: {exc.message}"
        elif isinstance(exc, ServerError):
            text = f"server error, HTTP {exc.status_code}"
        elif isinstance(exc, InvalidResponseError):
            text = f"unexpected non-S3 answer, HTTP {getattr(exc, '_code', '?')}"
        elif isinstance(exc, Urllib3HTTPError):
            reason = getattr(exc, "reason", None) or exc
            text = f"cannot reach the server ({type(reason).__name__}: {reason})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return self._scrub(text)

    def _fail(self, what: str, exc: BaseException, attempts: int = 1) -> ObjectStoreError:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return ObjectStoreError(
            f"S3 {what} on {self.endpoint}/{self.bucket} failed{tries}: {self._describe(exc)}"
        )

    def _delay(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 (jitter, not a secret)

    def _retry(
        self,
        what: str,
        operation: Callable[[], T],
        on_retry: Callable[[], None] | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """Run `operation`, retrying transient failures; raise ObjectStoreError otherwise."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                return operation()
            except (MinioException, Urllib3HTTPError, OSError) as exc:
                if not self._transient(exc) or attempt >= limit:
                    raise self._fail(what, exc, attempt) from None
                delay = self._delay(attempt)
                log.warning(
                    "S3 %s: transient failure (%s), attempt %d of %d, retrying in %.2f s",
                    what,
                    self._describe(exc),
                    attempt,
                    limit,
                    delay,
                )
                time.sleep(delay)
                if on_retry is not None:
                    on_retry()

    # -- bucket -----------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (once per store object; safe against races)."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return

            def create() -> None:
                if self._client.bucket_exists(self.bucket):
                    return
                try:
                    self._client.make_bucket(self.bucket, location=self.region)
                    log.info("created S3 bucket %s on %s", self.bucket, self.endpoint)
                except S3Error as exc:
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise

            self._retry(f"bucket check/creation of {self.bucket!r}", create)
            self._bucket_ready = True

    # -- the ObjectStore protocol ------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        self.ensure_bucket()

        def upload() -> None:
            self._client.put_object(self.bucket, name, io.BytesIO(data), len(data))

        self._retry(f"put of {key!r}", upload)

    def stage(self, key: str, data: bytes) -> Staged:
        """S3 has no rename, and a PUT is atomic and durable once acknowledged: staging is the put."""
        self.put(key, data)
        return Staged(key, "")

    def publish(self, staged: Iterable[Staged]) -> None:
        """Nothing to do: every staged object is already durable under its key."""

    def discard(self, staged: Staged) -> None:
        self.delete(staged.key)

    def get(self, key: str) -> bytes:
        return b"".join(self.get_stream(key))

    def exists(self, key: str) -> bool:
        name = self._name(key)
        self.ensure_bucket()

        def stat() -> bool:
            try:
                self._client.stat_object(self.bucket, name)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    return False
                raise
            return True

        return self._retry(f"existence check of {key!r}", stat)

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error (as in S3)."""
        name = self._name(key)
        self.ensure_bucket()
        self._retry(f"delete of {key!r}", lambda: self._client.remove_object(self.bucket, name))

    def check(self) -> None:
        """Raise ObjectStoreError unless a write, read and delete round trip works."""
        probe = f".health/{secrets.token_hex(8)}"
        payload = secrets.token_bytes(32)
        self.put(probe, payload)
        try:
            if self.get(probe) != payload:
                raise ObjectStoreError(f"S3 bucket {self.bucket!r} returned different bytes than written")
        finally:
            self.delete(probe)
        if self.exists(probe):
            raise ObjectStoreError(f"S3 bucket {self.bucket!r} still has an object after deleting it")

    # -- streaming --------------------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        reader: BinaryIO,
        length: int = -1,
        part_size: int | None = None,
        parallel: int = DEFAULT_PARALLEL_PARTS,
    ) -> None:
        """Upload from `reader`: one PUT when it fits in a part, else a multipart upload.

        `length` is the exact number of bytes to read, or -1 to read to the end. `part_size`
        defaults to `DEFAULT_PART_SIZE`, larger when `length` needs it to fit S3's 10,000 parts;
        an explicit one that cannot fit is refused. Up to `parallel`
        parts upload at once while the next one is read, so memory use is bounded by about
        `parallel + 1` parts whatever the object's size. Each part (or the single PUT) is retried
        on its own from memory, so the reader is read once, front to back, and need not seek. On
        any failure (a part that keeps failing, a reader that raises or ends early) the parts in
        flight are waited for and the multipart upload is aborted: the object appears only once
        complete, and nothing half-written stays on the server.
        """
        name = self._name(key)
        if part_size is None:
            needed = -(-length // MAX_PARTS) if length > 0 else 0
            part_size = max(DEFAULT_PART_SIZE, -(-needed // MiB) * MiB)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ObjectStoreError(
                f"part size {part_size} is outside S3's limits ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)"
            )
        if length < -1:
            raise ObjectStoreError(f"invalid length {length}")
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        if length > part_size * MAX_PARTS:
            raise ObjectStoreError(
                f"S3 put of {key!r} refused: {length} bytes need more than {MAX_PARTS} parts of {part_size}"
            )
        self.ensure_bucket()
        first = self._read_part(key, reader, part_size if length < 0 else min(part_size, length), length)
        # Unknown length: one byte more tells whether the first part is the whole object.
        peeked = reader.read(1) if length < 0 and len(first) == part_size else b""
        if peeked is None:
            raise ObjectStoreError(f"S3 put of {key!r}: non-blocking streams are not supported")
        if (length >= 0 and length <= part_size) or (length < 0 and not peeked):
            # One part at most: the SDK must not split it again (it would for sizes over 5 MiB).
            single = max(MIN_PART_SIZE, len(first))
            self._retry(
                f"put of {key!r}",
                lambda: self._client.put_object(
                    self.bucket, name, io.BytesIO(first), len(first), part_size=single, num_parallel_uploads=1
                ),
            )
            return
        upload_id = self._retry(
            f"start of the multipart upload of {key!r}",
            lambda: self._client._create_multipart_upload(
                self.bucket, name, {"Content-Type": "application/octet-stream"}
            ),
        )
        try:
            etags = self._upload_parts(
                key, name, upload_id, reader, (first, peeked), length, part_size, parallel
            )
            parts = [Part(number, etag) for number, etag in sorted(etags.items())]
            self._retry(
                f"completion of the multipart upload of {key!r}",
                lambda: self._client._complete_multipart_upload(self.bucket, name, upload_id, parts),
            )
        except BaseException:
            self._abort_upload(key, name, upload_id)
            raise

    def _upload_parts(
        self,
        key: str,
        name: str,
        upload_id: str,
        reader: BinaryIO,
        start: tuple[bytes, bytes],
        length: int,
        part_size: int,
        parallel: int,
    ) -> dict[int, str]:
        """Upload every part, at most `parallel` at once; returns part number -> ETag.

        `start` is the first part, already read, and (unknown length only) the byte after it.
        """
        first, peeked = start
        etags: dict[int, str] = {}
        in_flight: set[Future[tuple[int, str]]] = set()

        def upload(number: int, data: bytes) -> tuple[int, str]:
            etag = self._retry(
                f"upload of part {number} of {key!r}",
                lambda: self._client._upload_part(self.bucket, name, data, None, upload_id, number),
            )
            return number, etag

        def settle(done: set[Future[tuple[int, str]]]) -> None:
            for future in done:
                in_flight.discard(future)
                number, etag = future.result()  # a failed part raises here, stopping the upload
                etags[number] = etag

        # `with` waits for the parts in flight even when this raises, so the caller aborts the
        # upload only once no part can still land after the abort.
        with ThreadPoolExecutor(parallel, thread_name_prefix="s3-part") as pool:
            number, data, sent = 1, first, len(first)
            while True:
                in_flight.add(pool.submit(upload, number, data))
                del data  # the part now lives only in its upload
                if length >= 0:
                    if sent >= length:
                        break
                    size = min(part_size, length - sent)
                elif not peeked:
                    break
                else:
                    size = part_size
                if number >= MAX_PARTS:
                    raise ObjectStoreError(
                        f"S3 put of {key!r} refused: the stream needs more than {MAX_PARTS} parts "
                        f"of {part_size} bytes"
                    )
                # The next part is read while the others upload; a free slot is awaited only
                # before handing it over, so at most `parallel` + 1 parts are ever in memory.
                data = self._read_part(key, reader, size, length, peeked)
                sent += len(data)
                if length < 0:
                    peeked = reader.read(1) if len(data) == part_size else b""
                    if peeked is None:
                        raise ObjectStoreError(f"S3 put of {key!r}: non-blocking streams are not supported")
                number += 1
                settle({future for future in in_flight if future.done()})  # a failure stops reading
                while len(in_flight) >= parallel:
                    settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
            while in_flight:
                settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
        return etags

    def _read_part(self, key: str, reader: BinaryIO, size: int, length: int, carried: bytes = b"") -> bytes:
        """`size` bytes of the stream (starting with `carried`), fewer only at its end.

        With a known `length`, fewer is an error: the stream ended before the announced length.
        """
        pieces = [carried] if carried else []
        missing = size - len(carried)
        while missing > 0:
            piece = reader.read(missing)
            if piece is None:
                raise ObjectStoreError(f"S3 put of {key!r}: non-blocking streams are not supported")
            if not piece:
                break
            pieces.append(piece)
            missing -= len(piece)
        if missing > 0 and length >= 0:
            raise ObjectStoreError(
                f"S3 put of {key!r}: the stream ended early (expected {length} bytes in all)"
            )
        if len(pieces) == 1 and type(pieces[0]) is bytes:
            return pieces[0]
        return b"".join(pieces)

    def _abort_upload(self, key: str, name: str, upload_id: str) -> None:
        """Abort a multipart upload so that its parts do not linger (best effort, retried)."""
        try:
            self._retry(
                f"abort of the multipart upload of {key!r}",
                lambda: self._client._abort_multipart_upload(self.bucket, name, upload_id),
            )
        except ObjectStoreError as exc:
            # The original failure is what the caller must see; this one is only logged. A bucket
            # lifecycle rule for incomplete multipart uploads cleans up what an abort could not.
            log.warning("%s", exc)

    def get_stream(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the object's bytes in chunks of at most `chunk_size` bytes.

        The key is checked and the download started before the first chunk is asked for, so a
        missing object or a refused request raises here. A connection lost mid-way resumes at the
        byte reached, pinned to the same version by its ETag: if the object was replaced meanwhile,
        ObjectStoreError is raised rather than a mix of two versions.
        """
        name = self._name(key)
        self.ensure_bucket()

        def open_at(offset: int, etag: str | None) -> urllib3.BaseHTTPResponse:
            headers: dict[str, str | list[str] | tuple[str]] | None = {"If-Match": etag} if etag else None
            try:
                return self._client.get_object(self.bucket, name, offset=offset, request_headers=headers)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    raise _Missing from None
                if etag and exc.code == "PreconditionFailed":
                    raise _Changed from None
                raise

        try:
            first = self._retry(f"get of {key!r}", lambda: open_at(0, None))
        except _Missing:
            raise ObjectStoreError(f"no object {key!r}") from None
        return self._chunks(key, first, open_at, chunk_size)

    def _chunks(
        self,
        key: str,
        response: urllib3.BaseHTTPResponse,
        open_at: Callable[[int, str | None], urllib3.BaseHTTPResponse],
        chunk_size: int,
    ) -> Iterator[bytes]:
        etag = response.headers.get("ETag")
        offset = 0
        resumes = 0
        try:
            while True:
                try:
                    for chunk in response.stream(chunk_size):
                        offset += len(chunk)
                        yield chunk
                    return
                except (Urllib3HTTPError, OSError) as exc:
                    resumes += 1
                    if resumes >= self.max_attempts:
                        raise self._fail(f"get of {key!r}", exc, resumes) from None
                    log.warning("S3 get of %r: connection lost at byte %d, resuming", key, offset)
                    response.close()
                    response.release_conn()
                    time.sleep(self._delay(resumes))
                    try:
                        response = self._retry(f"get of {key!r}", functools.partial(open_at, offset, etag))
                    except _Missing:
                        raise ObjectStoreError(f"object {key!r} was deleted while being read") from None
                    except _Changed:
                        raise ObjectStoreError(f"object {key!r} was replaced while being read") from None
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield the keys (relative to this store's prefix) that start with `prefix`, in order."""
        if prefix:
            # a prefix may end in "/" or in the middle of a name, but only with key characters
            validate_key(prefix.rstrip("/"))
        full = self.prefix + prefix
        self.ensure_bucket()
        return self._list(full)

    def _list(self, full: str) -> Iterator[str]:
        last: str | None = None
        attempt = 0
        while True:
            try:
                for item in self._client.list_objects(
                    self.bucket, prefix=full or None, recursive=True, start_after=last
                ):
                    name = item.object_name
                    if name is None or item.is_dir:
                        continue
                    last = name
                    attempt = 0
                    yield name[len(self.prefix) :]
                return
            except (MinioException, Urllib3HTTPError, OSError) as exc:
                attempt += 1
                if not self._transient(exc) or attempt >= self.max_attempts:
                    raise self._fail(f"list of {full!r}", exc, attempt) from None
                time.sleep(self._delay(attempt))
