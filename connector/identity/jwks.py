"""Where an issuer's public keys come from: a JWKS held in memory/file, or fetched from its URL.

Remote keys are cached; an unknown key id triggers one refetch (key rotation), rate-limited so a
flood of tokens with random key ids cannot hammer the identity provider. Never logs key material.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt

from connector.identity.errors import AuthError


class JwksSource(Protocol):
    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        """The verification key for `kid` usable with `alg`; AuthError unknown_key otherwise."""


def _parse(jwks: Mapping[str, Any]) -> dict[str | None, jwt.PyJWK]:
    keys: dict[str | None, jwt.PyJWK] = {}
    for entry in jwks.get("keys", []):
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(dict(entry))
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue  # one unusable key must not disable the issuer's other keys
        keys[entry.get("kid")] = key
    return keys


def _select(keys: Mapping[str | None, jwt.PyJWK], kid: str | None, alg: str) -> Any | None:
    if kid is None:
        # Without a kid, accept only an unambiguous single key.
        candidates = list(keys.values())
        key = candidates[0] if len(candidates) == 1 else None
    else:
        key = keys.get(kid)
    if key is None:
        return None
    if key.algorithm_name != alg:
        raise AuthError(
            "unsupported_algorithm", f"key {kid!r} is for {key.algorithm_name}, the token claims {alg}"
        )
    return key.key


class StaticJwks:
    """A fixed key set (a pinned JWKS file, or the embedded development issuer)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = _parse(jwks)

    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        key = _select(self._keys, kid, alg)
        if key is None:
            raise AuthError("unknown_key", f"the issuer has no key with id {kid!r}")
        return key


def load_jwks_file(path: Path) -> StaticJwks:
    try:
        return StaticJwks(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"JWKS file {path} is not readable JSON: {exc}") from None


class RemoteJwks:
    """An issuer's published JWKS, fetched over HTTP(S) and cached."""

    def __init__(
        self, url: str, cache_seconds: int = 300, timeout_s: float = 5.0, min_refetch_seconds: float = 30.0
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.timeout_s = timeout_s
        self.min_refetch_seconds = min_refetch_seconds
        self._keys: dict[str | None, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")  # last successful fetch
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._lock = threading.Lock()

    def _may_fetch(self, now: float) -> bool:
        return now - self._attempted_at >= self.min_refetch_seconds

    def _fetch(self, now: float) -> None:
        self._attempted_at = now
        try:
            response = httpx.get(self.url, timeout=self.timeout_s, follow_redirects=False)
            response.raise_for_status()
            keys = _parse(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            if self._keys is None:
                raise AuthError(
                    "jwks_unavailable",
                    f"the issuer's keys at {self.url} could not be fetched ({type(exc).__name__})",
                ) from None
            return  # keep serving the keys we have until the issuer answers again
        self._keys, self._fetched_at = keys, now

    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        with self._lock:
            now = time.monotonic()
            stale = self._keys is None or now - self._fetched_at >= self.cache_seconds
            if stale and self._may_fetch(now):
                self._fetch(now)
            if self._keys is None:
                raise AuthError("jwks_unavailable", f"the issuer's keys at {self.url} are not available yet")
            key = _select(self._keys, kid, alg)
            if key is None and self._may_fetch(now):
                # Perhaps the issuer rotated its keys since we fetched them.
                self._fetch(now)
                key = _select(self._keys, kid, alg)
        if key is None:
            raise AuthError("unknown_key", f"the issuer has no key with id {kid!r}")
        return key
