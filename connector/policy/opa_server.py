"""The production policy backend: an OPA server (a sidecar) driven over OPA's REST API.

Policies and data go to the server through opa-python-client (Policy API `PUT/DELETE
/v1/policies/{id}`, Data API `PUT /v1/data/{path}`, `POST /v1/data/{path}` to evaluate, `GET
/health`). What that client lacks or gets wrong goes through httpx: SQL data filters from OPA's
Compile API (`POST /v1/compile/{path}` with an `application/vnd.opa.sql.<dialect>+json` Accept
header) and the policy listing (`GET /v1/policies`, with the sources).

The backend only ever touches policies whose id starts with its prefix (`imaging-connector/`), so
an OPA shared with other applications keeps theirs. A bundle is swapped in module by module (OPA's
REST API has no multi-module transaction): every change the server refuses is retried after the
others, and when the new set cannot be installed the previous one is put back. While a swap runs,
this process's evaluations wait, so it never answers from half a bundle; if putting the old bundle
back fails too, every evaluation fails until a bundle loads.

This module must never decide anything itself, never return an answer when the server, the network
or the server's reply is at fault (every such failure is a PolicyEngineError, which callers turn into
a deny), and never send a secret (the bearer token) anywhere but in the Authorization header.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import requests
from opa_client import OpaClient
from opa_client.errors import (
    ConnectionsError,
    DeleteDataError,
    DeletePolicyError,
    PatchDataError,
    PolicyNotFoundError,
    QueryExecuteError,
    RegoParseError,
)

from connector.policy.bundle import PolicyBundle
from connector.policy.engine import HEALTH_MODULE, PolicyEngineError, SqlDialect, state_document, where_clause

POLICY_ID_PREFIX = "imaging-connector/"
# Outside the bundle's id space, so that no bundle file can replace or delete it.
HEALTH_POLICY_ID = "imaging-connector-health"
# OPA's Compile API: "SQL: application/vnd.opa.sql.<dialect>+json ... result.query: String representing
# the SQL equivalent of the conditions under which the query is true" (docs/docs/rest-api.md,
# "Compiling a Rego policy (and query) into data filters").
SQL_MEDIA_TYPES: dict[str, str] = {
    "postgresql": "application/vnd.opa.sql.postgresql+json",
    "sqlite": "application/vnd.opa.sql.sqlite+json",
}

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_PATH_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+$")
_MESSAGE_LIMIT = 600
# The Policy API's error codes for a module that does not parse or compile next to the others (or a
# delete that would leave another module without a rule it uses), and for an unknown policy id.
_REFUSED_CODE = "invalid_parameter"
_NOT_FOUND_CODE = "resource_not_found"
_CLIENT_ERRORS = (
    ConnectionsError,
    DeleteDataError,
    DeletePolicyError,
    PatchDataError,
    PolicyNotFoundError,
    QueryExecuteError,
    RegoParseError,
)

T = TypeVar("T")


def policy_id(module_path: str, prefix: str = POLICY_ID_PREFIX) -> str:
    """The OPA policy id of a bundle module: the prefix and its path, made URL-safe when needed."""
    if _SAFE_ID.match(module_path) and ".." not in module_path.split("/"):
        return prefix + module_path
    cleaned = re.sub(r"[^A-Za-z0-9._/-]+", "_", module_path).strip("/.") or "module"
    cleaned = "/".join(part for part in cleaned.split("/") if part not in ("", ".", ".."))
    return f"{prefix}{cleaned}-{hashlib.sha256(module_path.encode('utf-8')).hexdigest()[:12]}"


def _short(text: object) -> str:
    value = " ".join(str(text).split())
    return value if len(value) <= _MESSAGE_LIMIT else value[: _MESSAGE_LIMIT - 3] + "..."


class _RefusedChange(Exception):
    """The server refused one policy change with `code`; another change may clear it."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class _TransportError(PolicyEngineError):
    """No answer came (timeout, refused connection): the server may or may not have applied a write."""


class _Gate:
    """Many evaluations at a time, or one bundle swap alone (a swap waits for running evaluations)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            while self._writing:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            while self._writing:
                self._condition.wait()
            self._writing = True
            while self._readers:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


class OpaServerBackend:
    """A PolicyBackend on an OPA server at `url` (http or https; no path), e.g. http://127.0.0.1:8181."""

    name = "opa-server"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 2.0,
        retries: int = 2,
        ca_file: str | None = None,
        id_prefix: str = POLICY_ID_PREFIX,
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PolicyEngineError(f"the OPA server URL must be http(s)://host[:port], not {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise PolicyEngineError(
                f"the OPA server URL must not carry a path, query or credentials: {parts.scheme}://"
                f"{parts.hostname}..."
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise PolicyEngineError(f"the OPA server URL has an invalid port: {url!r}") from None
        if timeout <= 0:
            raise PolicyEngineError("the OPA server timeout must be positive")
        if not id_prefix.endswith("/") or not _SAFE_ID.match(id_prefix.rstrip("/")):
            raise PolicyEngineError(f"the policy id prefix must look like 'name/', not {id_prefix!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        self.url = f"{parts.scheme}://{host}:{port}"
        self.timeout = timeout
        self._prefix = id_prefix
        https = parts.scheme == "https"
        # opa-python-client uses `ssl` both to pick https and as requests' `verify` (True or a CA file).
        self._client = OpaClient(
            host=host,
            port=port,
            ssl=(ca_file or True) if https else False,
            token=token,
            timeout=timeout,
            retries=retries,
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=timeout,
            verify=(ca_file or True) if https else True,
            transport=httpx.HTTPTransport(retries=retries),
        )
        self._gate = _Gate()
        self._write_lock = threading.Lock()
        # False after a swap failed and the previous bundle could not be put back either.
        self._consistent = True
        self._closed = False

    # -- the protocol ------------------------------------------------------------------------

    def load(self, bundle: PolicyBundle, state: dict[str, Any]) -> None:
        targets: dict[str, str] = {}
        for path, source in sorted(bundle.modules.items()):
            identifier = policy_id(path, self._prefix)
            if identifier in targets:
                raise PolicyEngineError(f"two modules of the bundle map to the OPA policy id {identifier}")
            targets[identifier] = source
        document = self._data_document(bundle.data, state)
        with self._write_lock, self._gate.exclusive():
            self._ensure_open()
            installed = self._list_policies()
            if installed.get(HEALTH_POLICY_ID) != HEALTH_MODULE:
                self._put_policy(HEALTH_POLICY_ID, HEALTH_MODULE)
            before = self._managed(installed)
            try:
                self._converge(before, targets)
            except PolicyEngineError as exc:
                self._roll_back(before, exc)
            try:
                # PUT /v1/data at the root replaces every base document: stale data goes too.
                self._call("replacing the data document", self._client.update_or_create_data, document, "")
            except PolicyEngineError as exc:
                # With no answer the server may hold the new data next to the old modules.
                self._roll_back(before, exc, data_unknown=isinstance(exc, _TransportError))
            self._consistent = True

    def set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise PolicyEngineError("the connector state must be a JSON object")
        with self._write_lock:
            self._ensure_open()
            self._call(
                "replacing data.connector.state", self._client.update_or_create_data, state, "connector/state"
            )

    def evaluate(self, path: str, input: Any) -> Any:
        url_path = self._url_path(path)
        with self._gate.shared():
            self._ensure_usable()
            answer = self._call(f"evaluating {path}", self._client.query_rule, input, url_path)
        if not isinstance(answer, dict):
            raise PolicyEngineError(f"the OPA server answered evaluating {path} with {_short(answer)!r}")
        return answer.get("result")

    def compile_filter(
        self, path: str, input: dict[str, Any], unknowns: list[str], dialect: SqlDialect
    ) -> str | None:
        media_type = SQL_MEDIA_TYPES.get(dialect)
        if media_type is None:
            raise PolicyEngineError(f"no SQL data filters for dialect {dialect!r}")
        url_path = self._url_path(path)
        what = f"compiling {path} into a filter"
        with self._gate.shared():
            self._ensure_usable()
            body = self._http_json(
                "POST",
                f"/v1/compile/{url_path}",
                what,
                json={"input": input, "unknowns": list(unknowns)},
                headers={"Accept": media_type},
            )
        result = body.get("result")
        # An absent result (or query) means the rule can never be true: "unconditional deny".
        if result is None:
            return None
        if not isinstance(result, dict):
            raise PolicyEngineError(f"the OPA server answered {what} with a result of {_short(result)!r}")
        return where_clause(result.get("query"))

    def check(self) -> None:
        with self._gate.shared():
            self._ensure_usable()
            if not self._client.check_health():
                raise PolicyEngineError(f"the OPA server at {self.url} did not answer GET /health with 200")
        result = self.evaluate("connector_health.ready", None)
        if result is None:
            with self._write_lock:
                self._put_policy(HEALTH_POLICY_ID, HEALTH_MODULE)
            result = self.evaluate("connector_health.ready", None)
        if result is not True:
            raise PolicyEngineError(f"the OPA server gave a wrong answer: {_short(result)!r}")

    def close(self) -> None:
        self._closed = True
        self._client.close_connection()
        self._http.close()

    def __enter__(self) -> OpaServerBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise PolicyEngineError("the OPA server backend is closed")

    def _ensure_usable(self) -> None:
        self._ensure_open()
        if not self._consistent:
            raise PolicyEngineError(
                f"the OPA server at {self.url} holds a partly installed policy bundle; "
                "no decision until a bundle loads"
            )

    @staticmethod
    def _url_path(path: str) -> str:
        segments = path.split(".")
        if not path or not all(_PATH_SEGMENT.match(segment) for segment in segments):
            raise PolicyEngineError(f"not a policy document path: {path!r}")
        return "/".join(segments)

    @staticmethod
    def _data_document(data: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise PolicyEngineError("the connector state must be a JSON object")
        connector = data.get("connector")
        if connector is not None and not isinstance(connector, dict):
            raise PolicyEngineError("the bundle's data.connector must be an object")
        if isinstance(connector, dict) and "state" in connector:
            raise PolicyEngineError("the bundle must not define data.connector.state: the connector owns it")
        document = copy.deepcopy(data)
        document.setdefault("connector", {}).update(state_document(copy.deepcopy(state))["connector"])
        return document

    def _call(self, what: str, function: Callable[..., T], *args: Any, changes: bool = False) -> T:
        """Run one opa-python-client call; every failure becomes a PolicyEngineError naming `what`.

        With `changes`, the server refusing a policy change (400) or not knowing the policy (404)
        raises _RefusedChange instead, for the caller to retry or accept.
        """
        try:
            return function(*args)
        except requests.Timeout:
            raise _TransportError(
                f"the OPA server at {self.url} timed out after {self.timeout}s {what}"
            ) from None
        except requests.ConnectionError as exc:
            raise _TransportError(
                f"the OPA server at {self.url} is unreachable ({what}): {_short(exc)}"
            ) from None
        except requests.HTTPError as exc:
            response = exc.response
            status = response.status_code if response is not None else "?"
            text = response.text if response is not None else ""
            detail = _error_text(_json_or_none(text), text)
            raise PolicyEngineError(
                f"the OPA server at {self.url} refused {what}: HTTP {status} {detail}"
            ) from None
        except _CLIENT_ERRORS as exc:
            code = getattr(exc, "expression", None)
            if changes and code in (_REFUSED_CODE, _NOT_FOUND_CODE):
                raise _RefusedChange(str(code), _client_error_text(exc)) from None
            raise PolicyEngineError(
                f"the OPA server at {self.url} refused {what}: {_client_error_text(exc)}"
            ) from None
        except (requests.RequestException, ValueError, TypeError, AttributeError, KeyError) as exc:
            # requests' JSONDecodeError (a non-JSON answer) is a RequestException and a ValueError.
            raise PolicyEngineError(f"the OPA server at {self.url} failed {what}: {_short(exc)}") from None

    def _put_policy(self, identifier: str, source: str) -> None:
        """PUT one module as it is (no rewriting of old Rego syntax by the client)."""
        self._call(
            f"installing policy {identifier}",
            self._client.update_policy_from_string,
            source,
            identifier,
            False,
        )

    def _http_json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        """One request through httpx (for what opa-python-client lacks); a JSON object or an error."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise _TransportError(
                f"the OPA server at {self.url} timed out after {self.timeout}s {what}"
            ) from None
        except httpx.TransportError as exc:
            raise _TransportError(
                f"the OPA server at {self.url} is unreachable ({what}): {_short(exc)}"
            ) from None
        except (httpx.HTTPError, ValueError, TypeError) as exc:  # also an input that is not JSON
            raise PolicyEngineError(f"the OPA server at {self.url} failed {what}: {_short(exc)}") from None
        body = _json_or_none(response.text)
        if response.status_code != 200:
            detail = _error_text(body, response.text)
            raise PolicyEngineError(
                f"the OPA server at {self.url} refused {what}: HTTP {response.status_code} {detail}"
            )
        if not isinstance(body, dict):
            raise PolicyEngineError(f"the OPA server answered {what} with {_short(response.text)!r}")
        return body

    def _list_policies(self) -> dict[str, str]:
        """Every module on the server, by id, with its source.

        `GET /v1/policies` without the trailing slash that opa-python-client's get_policies_list
        adds: OPA 1.x routes `/v1/policies/` to the policy with the empty id (404).
        """
        what = "listing policies"
        listing = self._http_json("GET", "/v1/policies", what).get("result")
        if not isinstance(listing, list):
            raise PolicyEngineError(f"the OPA server answered {what} without a list of policies")
        found: dict[str, str] = {}
        for item in listing:
            identifier = item.get("id") if isinstance(item, dict) else None
            raw = item.get("raw") if isinstance(item, dict) else None
            if not isinstance(identifier, str) or not isinstance(raw, str):
                raise PolicyEngineError(f"the OPA server answered {what} with a policy without id or source")
            found[identifier] = raw
        return found

    def _managed(self, policies: dict[str, str]) -> dict[str, str]:
        """The modules among `policies` that this connector installed (their id has its prefix)."""
        return {key: raw for key, raw in policies.items() if key.startswith(self._prefix)}

    def _converge(self, current: dict[str, str], targets: dict[str, str]) -> None:
        """Make this connector's modules on the server exactly `targets`, one change at a time.

        A change the server refuses (a module that needs one not installed yet, a delete that another
        module still depends on, a default rule that the module it moves out of still defines) is
        tried again after the others; when a whole round makes no progress the set cannot be
        installed and the refusals are raised.
        """
        puts = {key: source for key, source in targets.items() if current.get(key) != source}
        deletes = sorted(key for key in current if key not in targets)
        while puts or deletes:
            refusals: list[str] = []
            done = 0
            for identifier in list(deletes):
                try:
                    self._call(
                        f"deleting policy {identifier}", self._client.delete_policy, identifier, changes=True
                    )
                except _RefusedChange as exc:
                    if exc.code != _NOT_FOUND_CODE:  # already gone is what we wanted
                        refusals.append(f"deleting {identifier.removeprefix(self._prefix)}: {exc}")
                        continue
                deletes.remove(identifier)
                done += 1
            for identifier, source in sorted(puts.items()):
                try:
                    self._call(
                        f"installing policy {identifier}",
                        self._client.update_policy_from_string,
                        source,
                        identifier,
                        False,
                        changes=True,
                    )
                except _RefusedChange as exc:
                    refusals.append(f"{identifier.removeprefix(self._prefix)}: {exc}")
                    continue
                del puts[identifier]
                done += 1
            if not done:
                raise PolicyEngineError(
                    f"the OPA server at {self.url} refused the bundle: {_short('; '.join(refusals))}"
                )

    def _roll_back(
        self, before: dict[str, str], failure: PolicyEngineError, data_unknown: bool = False
    ) -> None:
        """Put the modules that were installed before back in place, then raise `failure`.

        When that fails too, or the data document's fate is unknown, this backend stops answering
        (fail closed) until a bundle loads.
        """
        try:
            self._converge(self._managed(self._list_policies()), before)
        except PolicyEngineError as exc:
            self._consistent = False
            raise PolicyEngineError(
                f"{failure}; putting the previous bundle back failed too ({exc}): every evaluation "
                "fails until a bundle loads"
            ) from None
        if data_unknown:
            self._consistent = False
            raise PolicyEngineError(
                f"{failure}; the previous modules are back but the data document may be the new one: "
                "every evaluation fails until a bundle loads"
            ) from None
        raise failure


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _error_text(body: Any, text: str) -> str:
    """OPA's error object ({"code", "message", "errors": [...]}) as one line, else the raw text."""
    if isinstance(body, dict) and ("code" in body or "message" in body):
        details = _details(body.get("errors"))
        return _short(f"{body.get('code')}: {body.get('message')}{details}")
    return _short(text) or "(empty body)"


def _details(errors: Any) -> str:
    if not isinstance(errors, list):
        return ""
    messages = [
        (f"{item['code']}: " if isinstance(item.get("code"), str) else "")
        + str(item.get("message"))
        + (
            f" ({item['location'].get('file')}:{item['location'].get('row')})"
            if isinstance(item.get("location"), dict)
            else ""
        )
        for item in errors[:3]
        if isinstance(item, dict) and item.get("message")
    ]
    return f" ({'; '.join(messages)})" if messages else ""


def _client_error_text(exc: Exception) -> str:
    code = getattr(exc, "expression", None)
    message = getattr(exc, "message", None)
    if code is None and message is None:
        return "an answer that is not an OPA error object"
    return _short(f"{code}: {message}{_details(getattr(exc, 'errors', None))}")
