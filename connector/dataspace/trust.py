"""The data space's trust list: the participants (peer connectors) this connector trusts, with
their public keys, organisation, country and DSP address, as a trust anchor would publish them.

It holds public keys only and refuses a file that holds a private one; it never fetches anything.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from connector.identity.jwks import StaticJwks

log = logging.getLogger("connector.dataspace")


class TrustListError(ValueError):
    """The trust list file is unusable; the message names the file and the entry, never a key."""


@dataclass(frozen=True)
class Participant:
    id: str
    organisation: str
    country: str  # ISO 3166-1 alpha-2, as the trust anchor vouches for it
    signing_key: Mapping[str, str]  # public JWK (OKP Ed25519)
    exchange_key: Mapping[str, str] | None  # public JWK (OKP X25519): re-wrapped study keys
    dsp: str  # the participant's DSP base URL ("" when unknown)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": self.id,
            "organisation": self.organisation,
            "country": self.country,
            "signing_key": dict(self.signing_key),
            "dsp": self.dsp,
        }
        if self.exchange_key is not None:
            entry["exchange_key"] = dict(self.exchange_key)
        return entry


def _participant(entry: Any, where: str) -> Participant:
    if not isinstance(entry, Mapping):
        raise TrustListError(f"{where}: an entry must be an object")
    text = {name: entry.get(name) for name in ("id", "organisation", "country")}
    missing = [name for name, value in text.items() if not isinstance(value, str) or not value]
    if missing:
        raise TrustListError(f"{where}: missing or empty {', '.join(missing)}")
    country = str(text["country"])
    if len(country) != 2 or not country.isalpha() or not country.isupper():
        raise TrustListError(f"{where}: country must be an ISO 3166-1 alpha-2 code such as DE")
    signing = entry.get("signing_key")
    if not isinstance(signing, Mapping) or signing.get("kty") != "OKP" or signing.get("crv") != "Ed25519":
        raise TrustListError(f"{where}: signing_key must be a public Ed25519 JWK (kty OKP, crv Ed25519)")
    if "d" in signing:
        raise TrustListError(f"{where}: signing_key holds a private key; a trust list holds public keys only")
    try:
        StaticJwks({"keys": [{**signing, "alg": "EdDSA", "use": "sig"}]}, source=where)
    except ValueError as exc:
        raise TrustListError(f"{where}: signing_key is not usable ({exc})") from None
    exchange = entry.get("exchange_key")
    if exchange is not None and (
        not isinstance(exchange, Mapping) or exchange.get("crv") != "X25519" or "d" in exchange
    ):
        raise TrustListError(f"{where}: exchange_key must be a public X25519 JWK")
    dsp = entry.get("dsp", "")
    if not isinstance(dsp, str):
        raise TrustListError(f"{where}: dsp must be a URL")
    return Participant(
        id=str(text["id"]),
        organisation=str(text["organisation"]),
        country=country,
        signing_key=dict(signing),
        exchange_key=dict(exchange) if exchange is not None else None,
        dsp=dsp.rstrip("/"),
    )


class TrustList:
    """The participants this connector trusts, by identifier."""

    def __init__(self, participants: list[Participant]) -> None:
        self._by_id: dict[str, Participant] = {}
        for participant in participants:
            if participant.id in self._by_id:
                raise TrustListError(f"participant {participant.id!r} is listed twice")
            self._by_id[participant.id] = participant

    @classmethod
    def load(cls, path: Path | None) -> TrustList:
        if path is None:
            return cls([])
        try:
            document = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise TrustListError(f"trust list {path} cannot be read: {exc.strerror}") from None
        except ValueError as exc:
            raise TrustListError(f"trust list {path} is not valid JSON: {exc}") from None
        entries = document.get("participants") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise TrustListError(f'trust list {path} must be an object with a "participants" list')
        return cls(
            [_participant(entry, f"trust list {path}, entry {i + 1}") for i, entry in enumerate(entries)]
        )

    def get(self, participant_id: str) -> Participant | None:
        return self._by_id.get(participant_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def by_address(self, address: str) -> Participant | None:
        """The participant whose DSP base URL `address` is (or lies under, segment by segment)."""
        return next((p for p in self._by_id.values() if p.dsp and callback_problem(p, address) is None), None)


_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_CALLBACK = 1024  # the stored column's length


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        return None
    return parts


def _port(parts: SplitResult) -> int | None:
    return parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())


def _segments(path: str) -> list[str] | None:
    """The path's segments; None when it could climb or hide (dot segments, encoded dots, slashes
    or backslashes), since a server may normalise what we compare literally."""
    lowered = path.lower()
    if "\\" in path or any(code in lowered for code in ("%2e", "%2f", "%5c", "%00")):
        return None
    segments = [segment for segment in path.split("/") if segment]
    if any(segment in (".", "..") for segment in segments):
        return None
    return segments


def callback_problem(participant: Participant | None, url: str) -> str | None:
    """Why `url` cannot be a callback address of `participant` (None when it can).

    A peer may only name an address under its own DSP base URL from the trust list: the same
    scheme, host and port, a path under the base path, no user information, query or fragment.
    Anything else would let a trusted peer aim this connector's signed messages at any host
    (server-side request forgery). The reason never echoes the address (it is peer input).
    """
    if participant is None or not participant.dsp:
        return "the trust list gives no DSP address for you, so no callback address can be accepted"
    if not url or len(url) > _MAX_CALLBACK or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return "the callback address is empty, too long or holds whitespace or control characters"
    given, base = _split(url), _split(participant.dsp)
    if given is None or base is None or given.scheme.lower() not in _DEFAULT_PORTS or not given.hostname:
        return "the callback address is not an absolute http(s) URL"
    if "@" in given.netloc or given.username is not None or given.password is not None:
        return "the callback address must not hold user information"
    if given.query or given.fragment or "#" in url or "?" in url:
        return "the callback address must not hold a query or a fragment"
    same_origin = (
        given.scheme.lower() == base.scheme.lower()
        and given.hostname == base.hostname  # urlsplit lower-cases host names
        and _port(given) == _port(base)
    )
    if not same_origin:
        return "the callback address is not on your DSP host (scheme, host and port) from the trust list"
    given_path, base_path = _segments(given.path), _segments(base.path) or []
    if given_path is None or given_path[: len(base_path)] != base_path:
        return "the callback address is not under your DSP base path from the trust list"
    return None


class TrustListFile:
    """The trust list file, re-read when it changes: the trust anchor's updates (a new participant,
    a rotated key, a removal) take effect without a restart. A file that has become unusable keeps
    the last good list and logs why; a list that was never good raises at start."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._list = TrustList([])
        self._lock = threading.Lock()
        self._started = False
        self.current()  # an unusable file stops start-up, clearly
        self._started = True

    def _stat(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            stat = self._path.stat()
        except OSError:
            return (-1, -1)
        return (stat.st_mtime_ns, stat.st_size)

    def current(self) -> TrustList:
        stamp = self._stat()
        if stamp == self._stamp:
            return self._list
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._list = TrustList.load(self._path)
                except TrustListError as exc:
                    if not self._started:
                        raise
                    log.error("the trust list changed but is unusable; keeping the previous one: %s", exc)
                self._stamp = stamp
        return self._list
