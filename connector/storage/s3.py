"""The object store on S3 (MinIO, SeaweedFS, AWS or any S3-compatible server), with the minio SDK.

`S3ObjectStore` implements the same `ObjectStore` protocol as the local folder store (put, get,
exists, delete, check) plus streaming: `put_stream` (multipart upload for large objects or
unknown lengths), `get_stream` (bytes chunks) and `list` (keys under a prefix).

What it does:
- validates every key with `validate_key` before any request is sent;
- creates its bucket on first use when it is missing (`ensure_bucket`);
- retries transient failures (connection errors, timeouts, HTTP 5xx, SlowDown) with exponential
  backoff and jitter, a bounded number of attempts; client errors (4xx) are never retried;
- relies on S3 PUT semantics for writes: a re-put of a key replaces the object atomically, a
  reader sees the old object or the new one, never a mix (multipart uploads become visible only
  when completed, and are aborted on failure);
- turns every failure into `ObjectStoreError` with a message saying what failed and why.

What it must never do: put the secret key in a message, a log line or a repr; retry a request the
server refused as invalid or unauthorised; accept a key that `validate_key` refuses; decide what
may be stored (it stores the bytes it is given, already encrypted upstream).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from connector.storage.objects import ObjectStoreError, validate_key

__all__ = ["S3ObjectStore"]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_PART_SIZE = 5 * 1024 * MiB
DEFAULT_PART_SIZE = 16 * MiB
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
        self._secret = secret_key
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        # Retries happen here, per operation, so the SDK's transport must not retry on its own.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=10,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            # a private CA in SSL_CERT_FILE, else the system's trust store (urllib3's default)
            ca_certs=os.environ.get("SSL_CERT_FILE") or None,
        )
        try:
            self._client = Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
                http_client=http,
            )
        except ValueError as exc:
            reason = self._scrub(str(exc))
            raise ObjectStoreError(f"S3 endpoint {endpoint!r} is not usable: {reason}") from None

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
        self, key: str, reader: BinaryIO, length: int = -1, part_size: int = DEFAULT_PART_SIZE
    ) -> None:
        """Upload from `reader`: one PUT when it fits in a part, else a multipart upload.

        `length` is the exact number of bytes to read, or -1 to read to the end. Memory use is
        bounded by about one part. A failed upload is retried only when `reader` can seek back to
        where it started; otherwise the first failure is raised (a consumed stream cannot be
        replayed: the caller retries with a fresh reader). The object appears only once complete.
        """
        name = self._name(key)
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ObjectStoreError(
                f"part size {part_size} is outside S3's limits ({MIN_PART_SIZE} to {MAX_PART_SIZE} bytes)"
            )
        if length < -1:
            raise ObjectStoreError(f"invalid length {length}")
        self.ensure_bucket()
        start: int | None = None
        try:
            if reader.seekable():
                start = reader.tell()
        except (OSError, AttributeError, ValueError):
            start = None

        def upload() -> None:
            try:
                self._client.put_object(
                    self.bucket, name, reader, length, part_size=part_size, num_parallel_uploads=1
                )
            except ValueError as exc:  # too many parts, bad length: a caller error
                raise ObjectStoreError(f"S3 put of {key!r} refused: {exc}") from None
            except OSError as exc:
                if "not enough data" in str(exc):
                    raise ObjectStoreError(f"S3 put of {key!r}: the stream ended early: {exc}") from None
                raise

        if start is None:
            self._retry(f"streamed put of {key!r}", upload, max_attempts=1)
        else:
            seek_start = start
            self._retry(f"streamed put of {key!r}", upload, on_retry=lambda: reader.seek(seek_start))

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
            headers = {"If-Match": etag} if etag else None
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
