"""A small Python client for a connector's API, for researchers (compute-to-data jobs) and peers
(the catalog, the connector's public keys), and for stewards registering an AI team's key.

    client = ConnectorClient("https://connector.example-hospital.eu", token)
    job = client.submit_job(Path("model.zip"), signature, dataset="screening-ct",
                            purpose="ai-development", permit=permit_jwt, cohort={"modality": ["CT"]})
    job = client.wait(job.id, on_progress=lambda j: print(j.studies_done, j.studies_total))
    body = client.verified_result(job.id)

Every answer other than 2xx raises `ConnectorError` carrying the server's machine-readable fields
(`code`, `detail`, `problems`, `reasons`); a connector that cannot be reached raises
`ConnectorUnreachable`. This module never puts the bearer token into a message, a repr, a log
line or an exception, and never sends it to a public route.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from pydantic import ValidationError

from connector.jobs.results import ResultError, verify_result
from connector.jobs.schemas import FINAL_STATES, JobState
from connector.jobs.schemas import JobRead as Job

COHORT_FIELDS = ("modality", "body_part", "age_band", "sex", "study_year", "manufacturer")
_MAX_DETAIL = 500

__all__ = [
    "COHORT_FIELDS",
    "FINAL_STATES",
    "ConnectorClient",
    "ConnectorError",
    "ConnectorUnreachable",
    "Job",
    "JobState",
    "ResultError",
    "WaitTimeout",
]


class ConnectorError(Exception):
    """The connector answered with an error (or could not be reached, status 0).

    `code` is the server's machine-readable reason (e.g. `access_denied`, `digest_mismatch`),
    `problems` why a submission was refused, `reasons` why the policy denied it.
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        problems: Sequence[str] = (),
        reasons: Sequence[str] = (),
        job: str | None = None,
    ) -> None:
        self.status, self.code, self.detail = status, code, detail
        self.problems: list[str] = list(problems)
        self.reasons: list[str] = list(reasons)
        self.job = job
        super().__init__(f"{code} (HTTP {status}): {detail}" if status else f"{code}: {detail}")

    def __repr__(self) -> str:
        return f"ConnectorError(status={self.status}, code={self.code!r}, detail={self.detail!r})"


class ConnectorUnreachable(ConnectorError):
    """No answer at all: the connector is down, the address is wrong, or the network failed."""


class WaitTimeout(TimeoutError):
    """`wait` gave up before the job reached a final state; `job` is the last state seen."""

    def __init__(self, job: Job, seconds: float) -> None:
        self.job = job
        super().__init__(f"job {job.id} is still {job.state} after {seconds:g} s")


def _job(document: Any) -> Job:
    """A Job (the API's read model) from the API's JSON; fields the server adds later are ignored."""
    try:
        return Job.model_validate(document)
    except ValidationError as exc:
        wrong = sorted({str(error["loc"][0]) for error in exc.errors() if error["loc"]})
        lacks = ", ".join(wrong) or "a job"
        raise ConnectorError(0, "bad_response", f"the job answer lacks {lacks}") from None


def _bounded(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def _error_of(response: httpx.Response) -> ConnectorError:
    """The server's error fields, or a plain description when the body is not the API's format."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        reason = response.reason_phrase or "error"
        return ConnectorError(response.status_code, f"http_{response.status_code}", reason)
    problems = body.get("problems")
    if not isinstance(problems, list):
        # Request validation errors name their fields instead.
        problems = [
            f"{item.get('field', '?')}: {item.get('problem', '')}"
            for item in body.get("fields") or []
            if isinstance(item, dict)
        ]
    reasons = body.get("reasons")
    reasons = reasons if isinstance(reasons, list) else []
    job = body.get("job") if isinstance(body.get("job"), str) else None
    return ConnectorError(
        response.status_code,
        str(body.get("error") or f"http_{response.status_code}"),
        _bounded(str(body.get("detail") or "")),
        [str(problem) for problem in problems],
        [str(reason) for reason in reasons],
        job,
    )


def _cohort(cohort: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The cohort as the API takes it: each field a list of strings (a single value is allowed)."""
    chosen: dict[str, list[str]] = {}
    for name, value in (cohort or {}).items():
        if name not in COHORT_FIELDS:
            raise ValueError(f"unknown cohort field {name!r}; known: {', '.join(COHORT_FIELDS)}")
        values = [value] if isinstance(value, str | int) else list(value or ())
        if values:
            chosen[name] = [str(item) for item in values]
    return chosen


class ConnectorClient:
    """Talks to one connector over HTTP(S) with one bearer token (None for public routes only).

    An injected `client` (an httpx.Client or a FastAPI TestClient) is used as it is: requests go to
    `base_url` + path through it, with the token added per request, never set on the client.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        timeout: float = 30,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._owned = client is None
        self._http = client if client is not None else httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"ConnectorClient({self.base_url!r})"

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> ConnectorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, authenticated: bool = True, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if authenticated:
            if not self._token:
                raise ConnectorError(0, "no_token", f"{method} {path} needs a token (none was given)")
            headers["authorization"] = f"Bearer {self._token}"
        try:
            response = self._http.request(method, self.base_url + path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise ConnectorUnreachable(0, "timeout", f"{self.base_url} did not answer in time") from None
        except httpx.TransportError as exc:
            # httpx's messages name the address and the OS error, never the headers.
            raise ConnectorUnreachable(
                0,
                "unreachable",
                f"cannot reach the connector at {self.base_url} ({exc or type(exc).__name__})",
            ) from None
        if not response.is_success:
            raise _error_of(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ConnectorError(
                response.status_code, "bad_response", f"{path} did not answer JSON"
            ) from None

    # --- compute-to-data -----------------------------------------------------------------------

    def submit_job(
        self,
        package: bytes | Path,
        signature: str,
        *,
        dataset: str,
        purpose: str,
        permit: str,
        cohort: Mapping[str, Any] | None = None,
        batch_size: int = 8,
    ) -> Job:
        """Submit a signed model package to run on `dataset`; the queued job.

        A policy denial raises ConnectorError with code `access_denied`, `reasons` and `job`; a
        refused submission (signature, package, request) one with `problems`.
        """
        content = package if isinstance(package, bytes | bytearray) else Path(package).read_bytes()
        request = {
            "dataset": dataset,
            "purpose": purpose,
            "permit": permit.strip(),
            "cohort": _cohort(cohort),
            "batch_size": batch_size,
        }
        document = self._json(
            "POST",
            "/v1/jobs",
            data={"job": json.dumps(request), "signature": signature.strip()},
            files={"package": ("package.zip", bytes(content), "application/zip")},
        )
        return _job(document)

    def job(self, job_id: str) -> Job:
        return _job(self._json("GET", f"/v1/jobs/{_segment(job_id)}"))

    def jobs(self, limit: int = 100) -> list[Job]:
        """Your jobs, newest first."""
        return [_job(item) for item in self._json("GET", "/v1/jobs", params={"limit": limit})]

    def wait(
        self,
        job_id: str,
        timeout: float = 600,
        poll: float = 1.0,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job is succeeded, failed, cancelled or denied; WaitTimeout after `timeout` s.
        `on_progress` sees every state polled, the final one included."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.job(job_id)
            if on_progress is not None:
                on_progress(current)
            if current.final:
                return current
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(current, timeout)
            time.sleep(min(poll, left))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next batch; nothing is released."""
        return _job(self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel"))

    def result(self, job_id: str) -> str:
        """The job's signed result as the connector sent it (a compact JWS)."""
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}/result").text.strip()

    def verified_result(self, job_id: str, keys: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The result's body once its signature checks out with the connector's key (fetched from
        the connector unless `keys`, a JWKS or one JWK, is given); ResultError when it does not."""
        return verify_with(self.result(job_id), keys if keys is not None else self.connector_keys())

    def connector_keys(self) -> dict[str, Any]:
        """The connector's public signing keys (a JWKS)."""
        document = self._json("GET", "/v1/connector/keys", authenticated=False)
        if not isinstance(document, dict):
            raise ConnectorError(200, "bad_response", "the connector's keys are not a JWKS")
        return document

    # --- catalog and teams ---------------------------------------------------------------------

    def search_catalog(self, **filters: Any) -> dict[str, Any]:
        """The public catalog as JSON-LD; filters as the API names them (modality, body_part,
        disease, purpose, country, age, page, per_page); list values repeat the parameter."""
        params: list[tuple[str, str]] = []
        for name, value in filters.items():
            if value is None:
                continue
            for item in [value] if isinstance(value, str | int) else list(value):
                params.append((name, str(item)))
        params.append(("format", "jsonld"))
        document = self._json(
            "GET",
            "/catalog",
            authenticated=False,
            params=params,
            headers={"accept": "application/ld+json"},
        )
        if not isinstance(document, dict):
            raise ConnectorError(200, "bad_response", "the catalog is not a JSON-LD object")
        return document

    def register_team_key(self, team: str, public_key_pem: str | bytes) -> dict[str, Any]:
        """Register an AI team's package-signing key (a steward's or DPO's token); the key's record."""
        pem = public_key_pem.decode("ascii") if isinstance(public_key_pem, bytes) else public_key_pem
        document = self._json("POST", "/v1/teams/keys", json={"team": team, "public_key": pem})
        if not isinstance(document, dict):
            raise ConnectorError(200, "bad_response", "the key registration answer is not an object")
        return document


def _segment(job_id: str) -> str:
    """A job id made safe as one path segment (ids are hex; anything else cannot match a job)."""
    return quote(job_id, safe="")


def verify_with(token: str, keys: Mapping[str, Any]) -> dict[str, Any]:
    """Verify a result with a JWKS (the key named by the result's `kid`, else the first) or a JWK."""
    candidates = keys.get("keys") if "keys" in keys else [keys]
    if not isinstance(candidates, list) or not candidates:
        raise ResultError("no public key to verify the result with")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except (jwt.PyJWTError, ValueError, TypeError):  # verify_result below says what is wrong
        kid = None
    chosen = next((key for key in candidates if isinstance(key, dict) and key.get("kid") == kid), None)
    return verify_result(token, dict(chosen or candidates[0]))
