"""Push HealthDCAT-AP dataset records to remote catalogs (a national HealthData@EU node, EUCAIM).

Each remote is a `RemoteCatalog`: a base URL, a kind whose preset decides the request shape, the
media type to send, optional credentials and retry settings. `publish()` sends one record (or its
withdrawal) with an idempotent PUT (or DELETE where the preset allows it), retries what may pass
on its own (connection errors, timeouts, 429, 5xx) and returns a `PublishOutcome` that says, in a
sentence a person can act on, what happened.

This module must never raise because a remote refused a record or could not be reached (that is an
outcome, not a bug), never follow a redirect with credentials, never let a dataset id escape its
path segment, and never write a token or password into an error, a log line or a repr. It imports
nothing from `connector`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, get_args
from urllib.parse import quote, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_attempt

logger = logging.getLogger(__name__)

Kind = Literal["healthdata-eu", "eucaim"]
MediaType = Literal["text/turtle", "application/ld+json"]
Action = Literal["publish", "withdraw"]

ANSWER_LIMIT = 2000  # characters of the remote's answer kept in an outcome
_READ_LIMIT = 64 * 1024  # bytes read from an answer: a hostile remote must not fill our memory
_MASK = "***"


@dataclass(frozen=True)
class Preset:
    """How one kind of remote catalog wants its records.

    `collection` is the path segment under the base URL that holds records
    (`PUT {url}/{collection}/{quoted id}`); `delete_withdraws` says whether a withdrawal may be a
    DELETE (when the caller asks for one) instead of a PUT of the record marked deprecated.
    """

    collection: str
    media_type: MediaType
    delete_withdraws: bool
    note: str


# The whole preset table. Both presets publish with an idempotent PUT of the full record to a URL
# the connector chooses, so a repeated push replaces rather than duplicates.
PRESETS: dict[str, Preset] = {
    # HealthData@EU national nodes harvest DCAT: a withdrawn dataset must stay harvestable with
    # adms:status Deprecated so the EU catalog learns it is gone, hence no DELETE.
    "healthdata-eu": Preset(
        collection="datasets",
        media_type="text/turtle",
        delete_withdraws=False,
        note="PUT {url}/datasets/{id}; withdraw = PUT of the deprecated record",
    ),
    # EUCAIM lists collections; a hospital may take one out entirely (DELETE) or leave it listed
    # as deprecated.
    "eucaim": Preset(
        collection="collections",
        media_type="application/ld+json",
        delete_withdraws=True,
        note="PUT {url}/collections/{id}; withdraw = DELETE when asked, else PUT of the deprecated record",
    ),
}

_KINDS: tuple[str, ...] = get_args(Kind)
_MEDIA_TYPES: tuple[str, ...] = get_args(MediaType)
_LOOPBACK_NAMES = {"localhost"}
# Header values we send must be visible ASCII: a CR/LF would let a caller's value forge headers.
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")
_MAX_ID_LENGTH = 1024


@dataclass(frozen=True)
class RemoteCatalog:
    """One remote catalog the hospital pushes records to.

    Authentication is a bearer `token`, or HTTP basic (`username` and `password`), or none.
    `retries` counts attempts in all (the first one included); between attempts the wait is
    `backoff_seconds * 2**(n-1)` capped at `max_backoff_seconds`, or the remote's Retry-After
    capped at `retry_after_cap_seconds`. An empty `media_type` takes the preset's.
    """

    name: str
    url: str
    kind: Kind
    media_type: MediaType | Literal[""] = ""
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_seconds: float = 10.0
    retries: int = 3
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    retry_after_cap_seconds: float = 30.0

    def __post_init__(self) -> None:
        _validate_remote(self)
        if not self.media_type:
            # Frozen: the preset's media type is filled in once, here, so every reader sees it.
            object.__setattr__(self, "media_type", PRESETS[self.kind].media_type)
        # The base URL is stored without a trailing slash so record URLs never hold "//".
        object.__setattr__(self, "url", self.url.rstrip("/"))

    def __repr__(self) -> str:
        # Secrets are masked, never left out silently: a reader of a log sees that one is set.
        return (
            f"RemoteCatalog(name={self.name!r}, url={self.url!r}, kind={self.kind!r}, "
            f"media_type={self.media_type!r}, auth={self.auth_kind!r}, "
            f"token={_MASK if self.token else ''!r}, username={self.username!r}, "
            f"password={_MASK if self.password else ''!r}, timeout_seconds={self.timeout_seconds!r}, "
            f"retries={self.retries!r}, backoff_seconds={self.backoff_seconds!r}, "
            f"max_backoff_seconds={self.max_backoff_seconds!r}, "
            f"retry_after_cap_seconds={self.retry_after_cap_seconds!r})"
        )

    __str__ = __repr__

    @property
    def preset(self) -> Preset:
        return PRESETS[self.kind]

    @property
    def auth_kind(self) -> Literal["bearer", "basic", "none"]:
        if self.token:
            return "bearer"
        if self.username:
            return "basic"
        return "none"

    @property
    def supports_delete(self) -> bool:
        """Whether `publish(..., withdraw=True, delete=True)` may be used with this remote."""
        return self.preset.delete_withdraws

    def secrets(self) -> tuple[str, ...]:
        """The secret strings to scrub from anything this module reports."""
        found = [s for s in (self.token, self.password) if s]
        if self.username:
            # A remote that echoes the Authorization header would show the encoded pair.
            found.append(_basic_credentials(self.username, self.password))
        return tuple(found)


@dataclass(frozen=True)
class PublishOutcome:
    """What one push to one remote catalog came to. `error` is empty when `ok` is true."""

    remote: str
    dataset_id: str
    action: Action
    ok: bool
    status_code: int | None
    attempts: int
    answer: str = ""
    error: str = ""
    remote_id: str = ""
    location: str = ""


def _validate_remote(remote: RemoteCatalog) -> None:
    """Raise ValueError, in words a person configuring the connector understands."""
    label = f"remote catalog {remote.name!r}" if remote.name else "a remote catalog"
    if not isinstance(remote.name, str) or not remote.name.strip():
        raise ValueError("a remote catalog needs a non-empty 'name'")
    if remote.kind not in PRESETS:
        raise ValueError(f"{label}: unknown kind {remote.kind!r}; expected one of {', '.join(_KINDS)}")
    if remote.media_type and remote.media_type not in _MEDIA_TYPES:
        raise ValueError(
            f"{label}: unsupported media_type {remote.media_type!r}; "
            f"expected one of {', '.join(_MEDIA_TYPES)}"
        )
    if not isinstance(remote.url, str):
        raise ValueError(f"{label}: 'url' must be a string")
    parts = urlsplit(remote.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{label}: url {remote.url!r} must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        # A URL is logged and shown; credentials belong in the token/username/password fields.
        raise ValueError(f"{label}: the url must not contain credentials; use token or username/password")
    if parts.query or parts.fragment:
        raise ValueError(f"{label}: the url must be a base URL without a query or fragment")
    for secret_name in ("token", "username", "password"):
        value = getattr(remote, secret_name)
        if not isinstance(value, str):
            raise ValueError(f"{label}: {secret_name!r} must be a string")
    if remote.token and (remote.username or remote.password):
        raise ValueError(f"{label}: give either a bearer token or basic auth (username/password), not both")
    if bool(remote.username) != bool(remote.password):
        raise ValueError(f"{label}: basic auth needs both 'username' and 'password'")
    if remote.token and not _HEADER_SAFE.match(remote.token):
        raise ValueError(f"{label}: the token must be printable ASCII without spaces")
    if ":" in remote.username or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in remote.username + remote.password
    ):
        raise ValueError(
            f"{label}: the username must not contain ':' and neither may hold control characters"
        )
    if (remote.token or remote.username) and parts.scheme == "http" and not _is_loopback(parts.hostname):
        # Credentials over plain HTTP can be read by anyone on the path; loopback is the one exception
        # (a sidecar or a test server).
        raise ValueError(f"{label}: credentials may only be sent over https (plain http only to localhost)")
    _check_number(label, "timeout_seconds", remote.timeout_seconds, minimum=0.0, exclusive=True)
    _check_number(label, "backoff_seconds", remote.backoff_seconds, minimum=0.0)
    _check_number(label, "max_backoff_seconds", remote.max_backoff_seconds, minimum=0.0)
    _check_number(label, "retry_after_cap_seconds", remote.retry_after_cap_seconds, minimum=0.0)
    if (
        isinstance(remote.retries, bool)
        or not isinstance(remote.retries, int)
        or not 1 <= remote.retries <= 20
    ):
        raise ValueError(f"{label}: 'retries' (attempts in all) must be a whole number from 1 to 20")


def _check_number(label: str, key: str, value: object, *, minimum: float, exclusive: bool = False) -> None:
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    in_range = number > minimum if exclusive else number >= minimum
    if not (math.isfinite(number) and in_range):
        bound = f"greater than {minimum:g}" if exclusive else f"at least {minimum:g}"
        raise ValueError(f"{label}: {key!r} must be a number {bound}, got {value!r}")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_CONFIG_KEYS = {
    "name",
    "url",
    "kind",
    "media_type",
    "token",
    "token_env",
    "username",
    "password",
    "password_env",
    "timeout_seconds",
    "retries",
    "backoff_seconds",
    "max_backoff_seconds",
    "retry_after_cap_seconds",
}


def parse_remote_catalogs(
    items: list[dict[str, Any]], *, environ: Mapping[str, str] | None = None
) -> list[RemoteCatalog]:
    """Build remote catalogs from configuration entries (e.g. a TOML array of tables).

    Besides the `RemoteCatalog` fields an entry may name an environment variable that holds its
    secret (`token_env`, `password_env`) so the secret need not sit in a config file. Raises
    ValueError naming the entry and the problem: unknown kind or key, a non-http(s) URL, both a
    token and basic auth, a missing secret variable, duplicate names.
    """
    env = os.environ if environ is None else environ
    if not isinstance(items, list):
        raise ValueError("remote catalogs must be a list of entries")
    remotes: list[RemoteCatalog] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"remote catalog #{index + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a table of settings, got {type(item).__name__}")
        if isinstance(item.get("name"), str) and item["name"].strip():
            where = f"remote catalog {item['name']!r}"
        unknown = sorted(set(item) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"{where}: unknown setting(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(_CONFIG_KEYS))}"
            )
        for required in ("name", "url", "kind"):
            if required not in item:
                raise ValueError(f"{where}: missing {required!r}")
        values = {k: v for k, v in item.items() if k not in ("token_env", "password_env")}
        for key, env_key in (("token", "token_env"), ("password", "password_env")):
            if env_key in item:
                if key in item:
                    raise ValueError(f"{where}: give {key!r} or {env_key!r}, not both")
                variable = item[env_key]
                if not isinstance(variable, str) or not variable:
                    raise ValueError(f"{where}: {env_key!r} must name an environment variable")
                if not env.get(variable):
                    raise ValueError(
                        f"{where}: environment variable {variable} ({env_key}) is not set or empty"
                    )
                values[key] = env[variable]
        remote = RemoteCatalog(**values)
        if remote.name in seen:
            raise ValueError(f"{where}: the name is used by another remote catalog")
        seen.add(remote.name)
        remotes.append(remote)
    return remotes


def record_url(remote: RemoteCatalog, dataset_id: str) -> str:
    """The URL of one record at a remote: `{url}/{collection}/{id}` with the id as ONE path segment.

    Every character outside the unreserved set is percent-encoded ("/" included), and an id made
    of dots only is encoded as %2E so no client or server can read it as "." or "..".
    """
    _check_dataset_id(dataset_id)
    segment = quote(dataset_id, safe="")
    if set(segment) == {"."}:
        segment = "%2E" * len(segment)
    url = f"{remote.url}/{remote.preset.collection}/{segment}"
    # Belt and braces: whatever the URL library normalises, the request must target that segment.
    base_path = httpx.URL(remote.url).raw_path.rstrip(b"/")
    expected = base_path + f"/{remote.preset.collection}/{segment}".encode("ascii")
    if httpx.URL(url).raw_path != expected:
        raise ValueError(f"dataset id {dataset_id!r} cannot be placed safely in a URL path")
    return url


def _check_dataset_id(dataset_id: str) -> None:
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ValueError("the dataset id must be a non-empty string")
    if len(dataset_id) > _MAX_ID_LENGTH:
        raise ValueError(f"the dataset id is longer than {_MAX_ID_LENGTH} characters")


def _basic_credentials(username: str, password: str) -> str:
    """The RFC 7617 credentials (base64 of "user:password", UTF-8)."""
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def content_digest(body: bytes) -> str:
    """The RFC 9530 Content-Digest field value (sha-256) of a body."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


@dataclass(frozen=True)
class _Answer:
    """The parts of a remote's HTTP answer this module uses (the body already capped)."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL


# What one attempt came to: an answer, or the transport error that stopped it.
_Attempt = _Answer | httpx.HTTPError


def _is_transient(result: _Attempt) -> bool:
    """Worth another attempt: the network failed, or the remote is throttling or broken for now."""
    if isinstance(result, httpx.HTTPError):
        return isinstance(result, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)
    # 501 Not Implemented and 505 will answer the same however often they are asked.
    return result.status == 429 or (result.status >= 500 and result.status not in (501, 505))


def _retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After value (delay-seconds or an HTTP-date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _wait_seconds(remote: RemoteCatalog, state: RetryCallState) -> float:
    result = state.outcome.result() if state.outcome else None
    if isinstance(result, _Answer) and result.status in (429, 503):
        asked = _retry_after_seconds(result.headers.get("retry-after"))
        if asked is not None:
            return min(asked, remote.retry_after_cap_seconds)
    return min(remote.backoff_seconds * 2 ** (state.attempt_number - 1), remote.max_backoff_seconds)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def _decode_answer(body: bytes, secrets: tuple[str, ...]) -> str:
    # Read a little past the limit so a multi-byte character cut at the end decodes as one
    # replacement character, not as noise.
    text = body[: ANSWER_LIMIT * 4].decode("utf-8", errors="replace")
    # Control characters (other than line breaks and tabs) would garble a log or a console.
    text = "".join(c if c in "\n\r\t" or c.isprintable() else "\ufffd" for c in text)
    return _scrub(text, secrets)[:ANSWER_LIMIT]


def _remote_identity(answer: _Answer) -> tuple[str, str]:
    """(remote_id, location) from a Location header or a JSON body's `id` / `@id`."""
    location = ""
    raw_location = answer.headers.get("location")
    if raw_location:
        try:
            location = str(answer.url.join(raw_location))
        except httpx.InvalidURL:
            location = ""
    remote_id = ""
    content_type = answer.headers.get("content-type", "")
    if "json" in content_type and answer.body:
        try:
            document = json.loads(answer.body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            found = document.get("id", document.get("@id"))
            if isinstance(found, str | int) and not isinstance(found, bool):
                remote_id = str(found)[:ANSWER_LIMIT]
    return remote_id, location


def _send_once(
    client: httpx.Client,
    method: str,
    url: str,
    headers: dict[str, str],
    content: bytes | None,
    timeout: float,
) -> _Attempt:
    try:
        with client.stream(
            method, url, headers=headers, content=content, timeout=timeout, follow_redirects=False
        ) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) >= _READ_LIMIT:
                    break
            return _Answer(response.status_code, response.headers, bytes(body[:_READ_LIMIT]), response.url)
    except httpx.HTTPError as exc:
        return exc


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _describe_failure(
    remote: RemoteCatalog, action: Action, result: _Attempt, attempts: int, answer: str
) -> str:
    """One sentence for a person: what went wrong and, where it helps, what to do."""
    tries = _plural(attempts, "attempt")
    what = "the record" if action == "publish" else "the withdrawal"
    detail = f": {answer[:300]}" if answer.strip() else ""
    if isinstance(result, httpx.TimeoutException):
        return f"the remote catalog did not answer within {remote.timeout_seconds:g} s ({tries})"
    if isinstance(result, httpx.ConnectError):
        host = urlsplit(remote.url).netloc
        return f"could not connect to the remote catalog at {host} ({tries}): {result}"
    if isinstance(result, httpx.HTTPError):
        return f"the connection to the remote catalog failed ({tries}): {type(result).__name__}: {result}"
    status = result.status
    if status in (401, 403):
        if remote.auth_kind == "none":
            hint = "; it wants credentials and none are configured"
        else:
            hint = f"; check the configured {remote.auth_kind} credentials"
        verb = "rejected the connector's credentials" if status == 401 else "denied access"
        return f"the remote catalog {verb} (HTTP {status}){hint}{detail}"
    if 300 <= status < 400:
        target = result.headers.get("location", "")
        return (
            f"the remote catalog redirected the request (HTTP {status}{' to ' + target if target else ''});"
            " set its url to the final address (credentials are never sent on to a redirect)"
        )
    if status == 429:
        return f"the remote catalog kept throttling requests (HTTP 429) over {tries}{detail}"
    if status >= 500:
        return f"the remote catalog failed (HTTP {status}) on {tries}{detail}"
    return f"the remote catalog refused {what} (HTTP {status}){detail}"


def _request_headers(remote: RemoteCatalog, record_digest: str, version: str) -> dict[str, str]:
    headers = {
        "Accept": "application/json, text/plain;q=0.5, */*;q=0.1",
        "User-Agent": "imaging-connector-catalog-publisher",
        # The remote dedupes on these: the same digest and version is the same record.
        "X-Record-Digest": record_digest,
        "X-Record-Version": version,
    }
    if remote.token:
        headers["Authorization"] = f"Bearer {remote.token}"
    elif remote.username:
        headers["Authorization"] = "Basic " + _basic_credentials(remote.username, remote.password)
    return headers


def publish(
    remote: RemoteCatalog,
    dataset_id: str,
    body: bytes,
    *,
    withdraw: bool = False,
    delete: bool = False,
    record_digest: str,
    version: str,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] | None = None,
) -> PublishOutcome:
    """Publish (or withdraw) one dataset record at one remote catalog; never raises for the remote.

    `body` is the full record in `remote.media_type`; to withdraw, pass the record whose status is
    deprecated with `withdraw=True` (it is PUT like any update, so it stays harvestable), or also
    `delete=True` where the preset allows a DELETE (`remote.supports_delete`). The request carries
    `X-Record-Digest`, `X-Record-Version` and an RFC 9530 `Content-Digest` so the remote can
    recognise a record it already holds: a repeated push is harmless. Raises ValueError only for
    a caller's mistake (empty id, header-unsafe digest or version, delete on a preset without it).
    `sleep` replaces the wait between attempts (tests); `client` is used as given and not closed.
    """
    if not isinstance(body, bytes | bytearray):
        raise ValueError("the record body must be bytes")
    for label, value in (("record_digest", record_digest), ("version", version)):
        if not isinstance(value, str) or not _HEADER_SAFE.match(value) or len(value) > 512:
            raise ValueError(f"{label} must be 1-512 printable ASCII characters without spaces")
    if delete and not withdraw:
        raise ValueError("delete=True only makes sense with withdraw=True")
    if delete and not remote.supports_delete:
        raise ValueError(
            f"remote catalog {remote.name!r} ({remote.kind}) keeps withdrawn records harvestable: "
            "withdraw with the deprecated record instead of delete=True"
        )
    url = record_url(remote, dataset_id)
    action: Action = "withdraw" if withdraw else "publish"
    headers = _request_headers(remote, record_digest, version)
    method = "DELETE" if delete else "PUT"
    content: bytes | None = None
    if not delete:
        content = bytes(body)
        headers["Content-Type"] = remote.media_type
        headers["Content-Digest"] = content_digest(content)

    attempts = 0

    def attempt() -> _Attempt:
        nonlocal attempts
        attempts += 1
        result = _send_once(http, method, url, headers, content, remote.timeout_seconds)
        shown = result.status if isinstance(result, _Answer) else type(result).__name__
        logger.debug("remote catalog %s: %s %s attempt %d -> %s", remote.name, method, url, attempts, shown)
        return result

    def before_sleep(state: RetryCallState) -> None:
        result = state.outcome.result() if state.outcome else None
        shown = f"HTTP {result.status}" if isinstance(result, _Answer) else type(result).__name__
        delay = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "remote catalog %s: %s of %r got %s; retrying in %.2f s (attempt %d of %d)",
            remote.name,
            action,
            dataset_id,
            shown,
            delay,
            state.attempt_number + 1,
            remote.retries,
        )

    retrying_kwargs: dict[str, Any] = {
        "stop": stop_after_attempt(remote.retries),
        "wait": lambda state: _wait_seconds(remote, state),
        "retry": retry_if_result(_is_transient),
        "before_sleep": before_sleep,
        # When attempts run out, hand back the last result instead of raising RetryError.
        "retry_error_callback": lambda state: state.outcome.result() if state.outcome else None,
    }
    if sleep is not None:
        retrying_kwargs["sleep"] = sleep

    http = client if client is not None else httpx.Client(follow_redirects=False)
    try:
        result: _Attempt = Retrying(**retrying_kwargs)(attempt)
    finally:
        if client is None:
            http.close()

    secrets = remote.secrets()
    if isinstance(result, httpx.HTTPError):
        error = _scrub(_describe_failure(remote, action, result, attempts, ""), secrets)
        logger.warning("remote catalog %s: %s of %r failed: %s", remote.name, action, dataset_id, error)
        return PublishOutcome(remote.name, dataset_id, action, False, None, attempts, error=error)

    answer = _decode_answer(result.body, secrets)
    # An idempotent withdrawal: a DELETE of a record the remote no longer has has done its job.
    ok = 200 <= result.status < 300 or (delete and result.status in (404, 410))
    remote_id, location = _remote_identity(result) if ok else ("", "")
    error = "" if ok else _scrub(_describe_failure(remote, action, result, attempts, answer), secrets)
    if ok:
        logger.info(
            "remote catalog %s: %s of %r done (HTTP %d, %s)",
            remote.name,
            action,
            dataset_id,
            result.status,
            _plural(attempts, "attempt"),
        )
    else:
        logger.warning("remote catalog %s: %s of %r failed: %s", remote.name, action, dataset_id, error)
    return PublishOutcome(
        remote=remote.name,
        dataset_id=dataset_id,
        action=action,
        ok=ok,
        status_code=result.status,
        attempts=attempts,
        answer=answer,
        error=error,
        remote_id=_scrub(remote_id, secrets),
        location=_scrub(location, secrets),
    )
