"""A real remote catalog for tests: a FastAPI app served by uvicorn on 127.0.0.1 in a thread.

It stands in for a HealthData@EU national node and a EUCAIM catalog so the publisher
(`catalog.publish`) is tested over real HTTP. It serves both presets' routes:

- `PUT /datasets/{id}` and `PUT /collections/{id}`: stores the record after checking its media
  type, its RFC 9530 `Content-Digest` (when sent) and that it parses (Turtle with rdflib, JSON-LD
  as JSON), answering 415 / 400 like a real catalog; 201 with a Location for a new record, 200 for
  a replacement or an unchanged repeat (same body, digest and version);
- `DELETE /datasets/{id}`, `DELETE /collections/{id}`: 204, or 404 when it holds no such record;
- `GET /datasets/{id}`, `GET /collections/{id}`: the stored body; `GET /datasets`: the ids.

The id is read from the RAW request path (one percent-encoded segment): uvicorn decodes `%2F`
before routing, so routing on the decoded path would let `a%2Fb` look like two segments. Every
request, routed or not, is logged in `.requests` with its raw path.

Knobs to make it misbehave: `fail_next(n, status=503, retry_after=None)`, `delay_seconds`,
`refuse_with(status=422, body=...)` (until `refuse_with(None)`), `require_token`, `require_basic`,
`redirect_to` (307 to that URL).

It is a test fixture and must never be deployed: no TLS, no persistence, loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import pytest
import rdflib
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

HOST = "127.0.0.1"
COLLECTIONS = ("datasets", "collections")  # healthdata-eu and eucaim preset paths
MEDIA_TYPES = ("text/turtle", "application/ld+json")
ADMS_STATUS = rdflib.URIRef("http://www.w3.org/ns/adms#status")
_STATUS_KEYS = ("adms:status", "status", str(ADMS_STATUS))


@dataclass
class RecordedRequest:
    """One request as the server received it, and the status it answered."""

    method: str
    raw_path: str  # percent-encoding intact, exactly as sent on the wire
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int = 0
    dataset_id: str | None = None


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: str | None
    body: str


def _status_of_turtle(graph: rdflib.Graph) -> str:
    for value in graph.objects(None, ADMS_STATUS):
        local = str(value).rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1].lower()
        if local in ("deprecated", "withdrawn"):
            return local
    return "active"


def _status_of_json(document: Any) -> str:
    """Walk a JSON-LD document for an adms:status whose IRI ends in Deprecated / Withdrawn."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _STATUS_KEYS:
                    candidates = value if isinstance(value, list) else [value]
                    for candidate in candidates:
                        iri = candidate.get("@id", "") if isinstance(candidate, dict) else candidate
                        if isinstance(iri, str):
                            local = iri.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].lower()
                            if local in ("deprecated", "withdrawn"):
                                return local
                stack.append(value)
    return "active"


class RemoteCatalogServer:
    """The server, its stored records and its request log. Use as a context manager."""

    def __init__(
        self,
        *,
        delay_seconds: float = 0.0,
        require_token: str | None = None,
        require_basic: tuple[str, str] | None = None,
    ) -> None:
        self.delay_seconds = delay_seconds
        self.require_token = require_token
        self.require_basic = require_basic
        self.redirect_to: str | None = None  # answer every request with 307 to this URL when set
        self.records: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._lock = threading.Lock()
        self._failure: _Failure | None = None
        self._refusal: tuple[int, str] | None = None
        self._closing = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- knobs -------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, *, retry_after: str | None = None, body: str = "") -> None:
        """Answer the next `n` requests with `status` (and a Retry-After header when given)."""
        with self._lock:
            self._failure = _Failure(n, status, retry_after, body or f"temporarily failing ({status})")

    def refuse_with(self, status: int | None = 422, body: str = "the record does not validate") -> None:
        """Answer every following write with `status` and `body` until `refuse_with(None)`."""
        with self._lock:
            self._refusal = None if status is None else (status, body)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> RemoteCatalogServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Binding port 0 ourselves and handing the socket over avoids a race for a "free" port.
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="remote-catalog", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test remote catalog did not start")
            time.sleep(0.01)
        self.url = f"http://{HOST}:{port}"
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes delayed handlers so shutdown does not wait for them
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RemoteCatalogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the app -------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="test remote catalog", openapi_url=None, docs_url=None, redoc_url=None)

        # One catch-all route: every request is logged, and the id comes from the raw path.
        @app.api_route("/{path:path}", methods=["GET", "PUT", "DELETE", "POST", "PATCH"])
        async def handle(request: Request, path: str) -> Response:
            raw_path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
            entry = RecordedRequest(
                method=request.method,
                raw_path=raw_path,
                headers={k.lower(): v for k, v in request.headers.items()},
                body=await request.body(),
            )
            with self._lock:
                self.requests.append(entry)
            response = await self._answer(request, entry)
            entry.status = response.status_code
            return response

        return app

    async def _answer(self, request: Request, entry: RecordedRequest) -> Response:
        if self.delay_seconds > 0:
            deadline = time.monotonic() + self.delay_seconds
            while time.monotonic() < deadline and not self._closing.is_set():
                await asyncio.sleep(0.02)
        with self._lock:
            failure = self._failure
            if failure is not None and failure.remaining > 0:
                failure.remaining -= 1
                headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
                return JSONResponse({"detail": failure.body}, status_code=failure.status, headers=headers)
        if self.redirect_to:
            return Response(status_code=307, headers={"Location": self.redirect_to})
        denied = self._check_auth(entry.headers.get("authorization", ""))
        if denied is not None:
            return denied
        with self._lock:
            refusal = self._refusal
        if refusal is not None and entry.method in ("PUT", "DELETE"):
            return JSONResponse({"detail": refusal[1]}, status_code=refusal[0])

        parts = entry.raw_path.split("/")
        # ["", collection] lists a collection; ["", collection, segment] is a record.
        if len(parts) < 2 or parts[1] not in COLLECTIONS:
            return JSONResponse({"detail": "no such route"}, status_code=404)
        collection = parts[1]
        if len(parts) == 2 or (len(parts) == 3 and parts[2] == ""):
            if entry.method != "GET":
                return JSONResponse({"detail": "method not allowed"}, status_code=405)
            with self._lock:
                ids = sorted(k for k, v in self.records.items() if v["collection"] == collection)
            return JSONResponse({"ids": ids})
        if len(parts) != 3:
            # An id must be one segment; an unencoded "/" would address something else.
            return JSONResponse({"detail": "a record id must be one path segment"}, status_code=404)
        dataset_id = unquote(parts[2])
        entry.dataset_id = dataset_id
        if entry.method == "PUT":
            return self._put(request, entry, collection, dataset_id)
        if entry.method == "DELETE":
            with self._lock:
                if dataset_id not in self.records or self.records[dataset_id]["collection"] != collection:
                    return JSONResponse({"detail": "no such record"}, status_code=404)
                del self.records[dataset_id]
                self.deleted.append(dataset_id)
            return Response(status_code=204)
        if entry.method == "GET":
            with self._lock:
                record = self.records.get(dataset_id)
            if record is None or record["collection"] != collection:
                return JSONResponse({"detail": "no such record"}, status_code=404)
            return Response(
                record["body"],
                media_type=record["media_type"],
                headers={"X-Record-Version": record["version"] or ""},
            )
        return JSONResponse({"detail": "method not allowed"}, status_code=405)

    def _check_auth(self, authorization: str) -> Response | None:
        challenge: dict[str, str] = {}
        if self.require_token is not None:
            expected = f"Bearer {self.require_token}"
            if hmac.compare_digest(authorization.encode(), expected.encode()):
                return None
            challenge = {"WWW-Authenticate": 'Bearer realm="catalog"'}
        elif self.require_basic is not None:
            scheme, _, encoded = authorization.partition(" ")
            try:
                user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            wanted_user, wanted_password = self.require_basic
            if (
                scheme.lower() == "basic"
                and hmac.compare_digest(user.encode(), wanted_user.encode())
                and hmac.compare_digest(password.encode(), wanted_password.encode())
            ):
                return None
            challenge = {"WWW-Authenticate": 'Basic realm="catalog"'}
        else:
            return None
        return JSONResponse({"detail": "authentication required"}, status_code=401, headers=challenge)

    def _put(self, request: Request, entry: RecordedRequest, collection: str, dataset_id: str) -> Response:
        media_type = entry.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            return JSONResponse({"detail": f"unsupported media type {media_type!r}"}, status_code=415)
        sent_digest = entry.headers.get("content-digest")
        if sent_digest is not None:
            actual = "sha-256=:" + base64.b64encode(hashlib.sha256(entry.body).digest()).decode() + ":"
            if sent_digest.replace(" ", "") != actual:
                return JSONResponse({"detail": "Content-Digest does not match the body"}, status_code=400)
        try:
            text = entry.body.decode("utf-8")
            if media_type == "text/turtle":
                graph = rdflib.Graph()
                graph.parse(data=text, format="turtle", publicID=str(request.url))
                status = _status_of_turtle(graph)
            else:
                document = json.loads(text)
                if not isinstance(document, dict | list):
                    raise ValueError("a JSON-LD document is an object or an array")
                status = _status_of_json(document)
        except Exception as exc:  # any parser failure is the client's bad record
            return JSONResponse({"detail": f"the record does not parse: {exc}"}, status_code=400)
        version = entry.headers.get("x-record-version")
        digest = entry.headers.get("x-record-digest")
        stored = {
            "collection": collection,
            "body": entry.body,
            "media_type": media_type,
            "version": version,
            "digest": digest,
            "status": status,
        }
        with self._lock:
            previous = self.records.get(dataset_id)
            self.records[dataset_id] = stored
        location = f"/{collection}/{quote(dataset_id, safe='')}"
        if previous is None:
            state, code = "created", 201
        elif all(previous[k] == stored[k] for k in ("body", "version", "digest")):
            state, code = "unchanged", 200
        else:
            state, code = "updated", 200
        return JSONResponse(
            {"id": f"remote-{collection}-{dataset_id}", "state": state, "status": status},
            status_code=code,
            headers={"Location": location} if code == 201 else {},
        )


@pytest.fixture
def remote_catalog() -> Iterator[RemoteCatalogServer]:
    """A fresh remote catalog per test (requests still in flight from a test cannot leak over)."""
    with RemoteCatalogServer() as server:
        yield server


@pytest.fixture
def another_remote_catalog() -> Iterator[RemoteCatalogServer]:
    """A second, independent remote catalog (a national node and a EUCAIM catalog side by side)."""
    with RemoteCatalogServer() as server:
        yield server


@pytest.fixture
def unreachable_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((HOST, 0))
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}"
    finally:
        sock.close()
