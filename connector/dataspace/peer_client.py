"""Sending DSP messages to a peer connector: one fresh identity token per request, bounded waits,
a bounded retry on transport failures, and the peer's DSP error read back as a reason.

It never follows redirects (a token must reach only the address the trust list or the process
names), never retries a request the peer answered, and never logs a token or a message body.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from connector.dataspace.identity import peer_token
from connector.dataspace.messages import ErrorMessage, MessageError, parse
from connector.dataspace.trust import callback_problem
from connector.runtime import Runtime

log = logging.getLogger("connector.dataspace")
_ATTEMPTS = 3
_MAX_ANSWER_BYTES = 8 << 20
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def shared_client() -> httpx.Client:
    """One pooled HTTP client per process: building a client (its TLS context) costs more than a
    DSP message on a local network, and kept-alive connections spare a handshake per message."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = httpx.Client(
                    follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=32)
                )
    return _client


class PeerError(Exception):
    """The peer refused a message (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, reasons: list[str]) -> None:
        super().__init__(f"{code}: {'; '.join(reasons)}" if reasons else code)
        self.status, self.code, self.reasons = status, code, reasons

    @property
    def unreachable(self) -> bool:
        return self.status == 0


def _reasons(response: httpx.Response) -> tuple[str, list[str]]:
    try:
        body = response.json()
        error = parse(ErrorMessage, body)
        reasons = [str(item)[:500] for item in error.reason][:10]
        return (error.code or f"http_{response.status_code}", reasons)
    except (ValueError, MessageError):
        return (f"http_{response.status_code}", [response.text[:300]] if response.text else [])


def call(
    runtime: Runtime,
    peer_id: str,
    method: str,
    url: str,
    message: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Send one DSP request to `url` as ourselves, for the peer `peer_id`; the JSON answer (None for
    an empty one). PeerError when the peer refuses or stays unreachable after a few attempts.

    `url` must lie under the peer's DSP address on the trust list: a stored callback address (or a
    trust list that changed since) never sends our token and signed messages to another host."""
    problem = callback_problem(runtime.trust.get(peer_id), url)
    if problem is not None:
        log.warning("refused to send to an address outside the peer's own", extra={"peer": peer_id})
        raise PeerError(0, "untrusted_address", [problem])
    timeout = runtime.settings.dsp_request_timeout_seconds
    last: Exception | None = None
    for attempt in range(_ATTEMPTS):
        headers = {"Authorization": f"Bearer {peer_token(runtime, peer_id, claims)}"}
        try:
            response = shared_client().request(method, url, json=message, headers=headers, timeout=timeout)
        except httpx.TransportError as exc:
            last = exc
            log.warning(
                "peer unreachable",
                extra={"peer": peer_id, "attempt": attempt + 1, "error": type(exc).__name__},
            )
            time.sleep(0.2 * (attempt + 1))
            continue
        if response.status_code >= 400:
            code, reasons = _reasons(response)
            raise PeerError(response.status_code, code, reasons)
        if len(response.content) > _MAX_ANSWER_BYTES:
            raise PeerError(response.status_code, "answer_too_large", ["the peer's answer is too large"])
        if not response.content:
            return None
        try:
            answer = response.json()
        except ValueError:
            raise PeerError(
                response.status_code, "invalid_answer", ["the peer's answer is not JSON"]
            ) from None
        if not isinstance(answer, dict):
            raise PeerError(
                response.status_code, "invalid_answer", ["the peer's answer is not a JSON object"]
            )
        return answer
    raise PeerError(0, "peer_unreachable", [f"the peer at {url} cannot be reached ({type(last).__name__})"])
