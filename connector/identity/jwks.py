"""Where an issuer's public keys come from: a JWKS held in memory or a file, or fetched from its URL.

Only public signature keys for RS256 (RSA >= 2048 bits), ES256 (P-256) and EdDSA are kept; entries
holding private or symmetric key material are refused, so a shared secret can never become a
verification key. Remote keys are cached; an unknown key id triggers a refetch (key rotation), rate
limited so a flood of tokens with made-up key ids cannot hammer the identity provider.

This module never logs or reports key material, and never puts credentials from a URL in a message.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from connector.identity.errors import AuthError

log = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
MIN_RSA_BITS = 2048
# JWK members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class JwksSource(Protocol):
    """An issuer's key set. Implementations must be safe to call from several threads."""

    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        """The public key for `kid` usable with `alg` (a key object `jwt.decode` accepts).

        Raises AuthError: unknown_key (no such key), unsupported_algorithm (the key is for another
        algorithm), jwks_unavailable (the keys could not be obtained).
        """
        ...


@dataclass(frozen=True)
class _Key:
    kid: str | None
    algorithm: str
    key: Any  # a cryptography public key object


def _shown(value: object, limit: int = 64) -> str:
    """A header value an attacker controls, made safe for a message: quoted, escaped, bounded."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _problem(entry: Mapping[str, Any], kid: Any) -> str | None:
    """Why a JWKS entry cannot be a verification key, or None when it may be one."""
    if kid is not None and not isinstance(kid, str):
        return "its kid is not a string"
    if entry.get("use", "sig") != "sig":
        return "it is not for signatures (use != sig)"
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return "its key_ops do not include verify"
    if _PRIVATE_MEMBERS & entry.keys():
        # A published private or symmetric key is compromised by definition; never trust it.
        return "it holds private or symmetric key material (a JWKS must publish public keys only)"
    return None


def _checked_key(jwk: jwt.PyJWK) -> str | None:
    """Why a parsed key is too weak or mismatched for its algorithm, or None when it is fine."""
    if jwk.algorithm_name not in SUPPORTED_ALGORITHMS:
        return f"its algorithm {jwk.algorithm_name} is not supported"
    key = jwk.key
    if jwk.algorithm_name == "RS256":
        if not isinstance(key, rsa.RSAPublicKey):
            return "it is not an RSA public key"
        if key.key_size < MIN_RSA_BITS:
            return f"its RSA modulus has {key.key_size} bits, fewer than {MIN_RSA_BITS}"
    if jwk.algorithm_name == "ES256" and not (
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    ):
        return "ES256 needs a P-256 public key"
    return None


def parse_jwks(document: Any, source: str) -> tuple[list[_Key], list[str]]:
    """The usable public signature keys of a JWKS, and why each other entry was skipped.

    One unusable entry (an encryption key, an algorithm we do not accept) must not disable the
    issuer's other keys, so entries are skipped, not fatal. ValueError if `document` is not a JWKS.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError(f"{source} is not a JWKS (a JSON object with a 'keys' list)")
    keys: list[_Key] = []
    skipped: list[str] = []
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, Mapping):
            skipped.append(f"entry #{index}: not a JSON object")
            continue
        kid = entry.get("kid")
        label = f"key {_shown(kid)}" if isinstance(kid, str) else f"entry #{index}"
        problem = _problem(entry, kid)
        if problem is None:
            try:
                jwk = jwt.PyJWK(dict(entry))
            except Exception as exc:  # any malformed member; the message may quote it, so drop it
                problem = f"not a valid public key ({type(exc).__name__})"
            else:
                problem = _checked_key(jwk)
        if problem is not None:
            skipped.append(f"{label}: {problem}")
            continue
        keys.append(_Key(kid, jwk.algorithm_name, jwk.key))
    return keys, skipped


def _select(keys: list[_Key], kid: str | None, alg: str) -> Any | None:
    """The key for (kid, alg); None when there is none; AuthError when the kid is for another alg."""
    if kid is None:
        # Without a kid, accept only an unambiguous key: exactly one for this algorithm.
        candidates = [key for key in keys if key.algorithm == alg]
        return candidates[0].key if len(candidates) == 1 else None
    matching = [key for key in keys if key.kid == kid]
    for key in matching:
        if key.algorithm == alg:
            return key.key
    if matching:
        # The key's own type decides the algorithm, never the token's header (algorithm confusion).
        raise AuthError(
            "unsupported_algorithm",
            f"key {_shown(kid)} is for {matching[0].algorithm}, the token claims {_shown(alg, 16)}",
        )
    return None


class StaticJwks:
    """A fixed key set: a pinned JWKS file, or the embedded development issuer's key."""

    def __init__(self, jwks: Mapping[str, Any], source: str = "the JWKS") -> None:
        keys, skipped = parse_jwks(jwks, source)
        for reason in skipped:
            log.warning("ignoring an entry of %s: %s", source, reason)
        if not keys:
            raise ValueError(
                f"{source} has no usable public signature key"
                + (f" ({'; '.join(skipped)})" if skipped else "")
            )
        self._keys = keys

    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        key = _select(self._keys, kid, alg)
        if key is None:
            raise AuthError("unknown_key", f"the issuer has no {alg} key with id {_shown(kid)}")
        return key


def load_jwks_file(path: Path) -> StaticJwks:
    """The keys of a JWKS file; ValueError naming the file (never its content) when unusable."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"JWKS file {path} cannot be read: {exc.strerror}") from None
    except ValueError as exc:
        # JSONDecodeError's message gives the position only, never the text around it.
        raise ValueError(f"JWKS file {path} is not valid JSON: {exc}") from None
    return StaticJwks(document, source=f"JWKS file {path}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RemoteJwks:
    """An issuer's published JWKS, fetched over HTTPS and cached.

    - Keys are cached for `cache_seconds`; after that the next verification refreshes them.
    - An unknown kid triggers one refetch (the issuer may have rotated keys), but fetches are at
      least `min_refetch_seconds` apart, whatever the outcome, so neither random kids nor an
      unreachable issuer turn every request into a request to the issuer.
    - When the issuer cannot be reached, the last keys fetched keep serving for at most
      `max_stale_seconds` past their cache time (an outage of the IdP does not lock everyone
      out at once), then `jwks_unavailable`.
    - Plain http is refused except to a loopback address, because whoever can alter the JWKS in
      transit can mint tokens; `allow_insecure_http` exists for closed test networks only.
    - Redirects are not followed and the body is capped at `max_bytes`.
    The lock is held during a fetch, so concurrent requests wait for one fetch instead of each
    starting their own.
    """

    def __init__(
        self,
        url: str,
        cache_seconds: int = 300,
        timeout_s: float = 5.0,
        *,
        min_refetch_seconds: float = 30.0,
        max_stale_seconds: float = 3600.0,
        max_bytes: int = 1_048_576,
        allow_insecure_http: bool = False,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"JWKS URL is not a valid URL ({exc})") from None
        if parsed.scheme not in {"https", "http"} or not parsed.host:
            raise ValueError("JWKS URL must be an absolute https:// URL")
        if parsed.scheme == "http" and not (allow_insecure_http or _is_loopback(parsed.host)):
            raise ValueError(
                f"JWKS URL {self._display(parsed)} uses plain http: anyone on the path could swap the "
                "keys and forge tokens; use https"
            )
        if cache_seconds <= 0 or timeout_s <= 0 or min_refetch_seconds < 0 or max_stale_seconds < 0:
            raise ValueError("cache_seconds and timeout_s must be positive, the other intervals >= 0")
        self.url = url
        self.cache_seconds = cache_seconds
        self.timeout_s = timeout_s
        self.min_refetch_seconds = min_refetch_seconds
        self.max_stale_seconds = max_stale_seconds
        self.max_bytes = max_bytes
        self._shown_url = self._display(parsed)
        self._keys: list[_Key] | None = None
        self._fetched_at = float("-inf")  # last successful fetch (monotonic clock)
        self._attempted_at = float("-inf")  # last attempt, successful or not
        self._last_problem = "not fetched yet"
        self._lock = threading.Lock()

    @staticmethod
    def _display(url: httpx.URL) -> str:
        # Without user:password and query: either could carry a credential.
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.host}{port}{url.path}"

    def _download(self) -> list[_Key]:
        """One GET of the JWKS; raises _FetchFailed with a reason fit for a log line."""
        try:
            with httpx.stream(
                "GET",
                self.url,
                timeout=self.timeout_s,
                follow_redirects=False,
                headers={"accept": "application/jwk-set+json, application/json"},
            ) as response:
                if response.status_code != 200:
                    raise _FetchFailed(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise _FetchFailed(f"response larger than {self.max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise _FetchFailed(type(exc).__name__) from None
        try:
            document = json.loads(body)
        except ValueError:
            raise _FetchFailed("the response is not JSON") from None
        try:
            keys, skipped = parse_jwks(document, "the response")
        except ValueError as exc:
            raise _FetchFailed(str(exc)) from None
        for reason in skipped:
            log.warning("ignoring an entry of the JWKS at %s: %s", self._shown_url, reason)
        return keys

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            keys = self._download()
        except _FetchFailed as exc:
            self._last_problem = exc.reason
            log.warning("could not fetch the JWKS at %s: %s", self._shown_url, exc.reason)
            return
        if not keys:
            # The issuer answered with no usable key: authoritative (it may have revoked them all).
            log.warning("the JWKS at %s holds no usable signature key", self._shown_url)
        self._keys, self._fetched_at = keys, now

    def _current(self, now: float) -> list[_Key]:
        if self._keys is None or now - self._fetched_at > self.cache_seconds + self.max_stale_seconds:
            raise AuthError(
                "jwks_unavailable",
                f"the issuer's keys at {self._shown_url} could not be fetched ({self._last_problem})",
            )
        return self._keys

    def _may_fetch(self, now: float) -> bool:
        return now - self._attempted_at >= self.min_refetch_seconds

    def get_signing_key(self, kid: str | None, alg: str) -> Any:
        with self._lock:
            now = time.monotonic()
            stale = self._keys is None or now - self._fetched_at >= self.cache_seconds
            if stale and self._may_fetch(now):
                self._refresh(now)
            key = _select(self._current(now), kid, alg)
            if key is None and self._may_fetch(now):
                # Perhaps the issuer rotated in a new key since we last fetched.
                self._refresh(now)
                key = _select(self._current(now), kid, alg)
        if key is None:
            raise AuthError("unknown_key", f"the issuer has no {alg} key with id {_shown(kid)}")
        return key


class _FetchFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
