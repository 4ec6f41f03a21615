"""Data permits: signed JWTs from a Health Data Access Body, verified before any policy sees them.

A permit (EHDS art. 68) names the requester and their organisation, the purposes, the datasets,
the countries the data may be processed from, a validity window and conditions. Its format here:

    iss: the HDAB          sub: the requester          jti: the permit id
    aud: "ehds-data-permit"  iat / nbf / exp: validity
    org: organisation      purposes: [codes]  datasets: [names]  countries: [alpha-2]
    conditions: [free text the HDAB attaches]

`PermitVerifier.check` never raises for a bad permit: it returns a PermitCheck whose status names
the problem, and the Rego permit policy turns every status but "valid" into a deny with a reason.
Signatures are checked with pyjwt against the HDAB keys configured (or, in development mode only,
the embedded development HDAB). This module never logs a permit.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.identity.dev_issuer import DevIssuer
from connector.identity.errors import AuthError
from connector.identity.verifier import TokenVerifier, TrustedIssuer

PERMIT_AUDIENCE = "ehds-data-permit"
DEV_HDAB_ISSUER = "urn:connector:dev-hdab"
# A permit covers a research project; the HDAB may grant up to five years (EHDS art. 68(12)).
MAX_PERMIT_DAYS = 5 * 366
_COUNTRY = re.compile(r"[A-Z]{2}")
# What a permit id (`jti`) may look like on the command line: HDABs choose their own schemes
# ("HDAB-DE-2026-0001", "urn:..."), so this only keeps out what no HDAB issues (spaces, quotes,
# control characters, empty or endless strings).
_PERMIT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_STATUS_OF_CODE = {
    "token_expired": "expired",
    "token_not_yet_valid": "not_yet_valid",
    "invalid_signature": "invalid_signature",
    # Signed with a key the HDAB never published: as good as a wrong signature.
    "unknown_key": "invalid_signature",
    "unknown_issuer": "untrusted_issuer",
}


@dataclass(frozen=True)
class PermitCheck:
    status: (
        str  # valid | missing | expired | not_yet_valid | invalid_signature | untrusted_issuer | malformed
    )
    detail: str
    claims: Mapping[str, Any] = field(default_factory=dict)

    def to_input(self) -> dict[str, Any]:
        """The `permit_check` object of a policy input."""
        document: dict[str, Any] = {"status": self.status, "detail": self.detail}
        if self.status == "valid":
            document["claims"] = dict(self.claims)
        return document


def new_permit_id() -> str:
    """A fresh id in the development HDAB's scheme (permit-<12 hex digits>)."""
    return f"permit-{uuid.uuid4().hex[:12]}"


def permit_id_problem(permit_id: str) -> str | None:
    """Why `permit_id` cannot be the id of any HDAB's permit, or None when it can."""
    if _PERMIT_ID.fullmatch(permit_id):
        return None
    return (
        f"{permit_id!r:.60} is not a permit id: letters, digits and . _ : / @ + - (up to 200), "
        "as the permit's `jti` claim holds it"
    )


def _string_list(claims: Mapping[str, Any], name: str) -> list[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"claim {name!r} must be a list of non-empty strings")
    return list(value)


def _normalised(claims: Mapping[str, Any]) -> dict[str, Any]:
    permit_id, organisation = claims.get("jti"), claims.get("org")
    if not isinstance(permit_id, str) or not permit_id.strip():
        raise ValueError("the permit has no id (claim 'jti')")
    if not isinstance(organisation, str) or not organisation.strip():
        raise ValueError("the permit names no organisation (claim 'org')")
    countries = [country.upper() for country in _string_list(claims, "countries")]
    if not all(_COUNTRY.fullmatch(country) for country in countries):
        raise ValueError("claim 'countries' must hold ISO 3166-1 alpha-2 codes")
    purposes, datasets = _string_list(claims, "purposes"), _string_list(claims, "datasets")
    if not purposes or not datasets:
        raise ValueError("the permit must name at least one purpose and one dataset")
    return {
        "permit_id": permit_id,
        "issuer": claims["iss"],
        "requester": claims["sub"],
        "organisation": organisation,
        "purposes": purposes,
        "datasets": datasets,
        "countries": countries,
        "not_before": claims.get("nbf", claims["iat"]),
        "expires": claims["exp"],
        "conditions": _string_list(claims, "conditions"),
    }


class PermitVerifier:
    """Checks permits against a fixed set of trusted HDABs."""

    def __init__(self, issuers: Sequence[TrustedIssuer], leeway_seconds: int = 60) -> None:
        self._verifier = TokenVerifier(
            issuers, PERMIT_AUDIENCE, leeway_seconds=leeway_seconds, max_lifetime_seconds=None
        )

    @property
    def issuers(self) -> tuple[str, ...]:
        return self._verifier.issuers

    def check(self, permit: Any) -> PermitCheck:
        if permit is None or permit == "":
            return PermitCheck("missing", "the request carries none")
        if not isinstance(permit, str):
            return PermitCheck("malformed", "the data permit must be a JWT string")
        try:
            _, claims = self._verifier.verify_claims(permit)
        except AuthError as exc:
            return PermitCheck(_STATUS_OF_CODE.get(exc.code, "malformed"), exc.detail)
        try:
            return PermitCheck("valid", f"permit {claims['jti']} from {claims['iss']}", _normalised(claims))
        except ValueError as exc:
            return PermitCheck("malformed", str(exc))


class DevPermitIssuer:
    """The development HDAB: signs permits that only a connector in development mode trusts."""

    def __init__(self, issuer: DevIssuer) -> None:
        self._issuer = issuer

    @classmethod
    def load_or_create(cls, key_dir: Any) -> DevPermitIssuer:
        return cls(DevIssuer.load_or_create(key_dir, DEV_HDAB_ISSUER, PERMIT_AUDIENCE))

    def trusted_issuer(self) -> TrustedIssuer:
        return self._issuer.trusted_issuer()

    def issue(
        self,
        requester: str,
        organisation: str,
        purposes: Sequence[str],
        datasets: Sequence[str],
        countries: Sequence[str] = (),
        valid_days: int = 30,
        conditions: Sequence[str] = (),
        permit_id: str | None = None,
    ) -> str:
        """A signed permit; ValueError for an argument no HDAB would sign."""
        if not requester.strip() or not organisation.strip():
            raise ValueError("a permit names its requester and organisation")
        if not purposes or not datasets:
            raise ValueError("a permit names at least one purpose and one dataset")
        upper = [country.upper() for country in countries]
        if not all(_COUNTRY.fullmatch(country) for country in upper):
            raise ValueError(
                f"countries must be ISO 3166-1 alpha-2 codes such as 'DE', got {list(countries)}"
            )
        if isinstance(valid_days, bool) or not 1 <= valid_days <= MAX_PERMIT_DAYS:
            raise ValueError(f"valid_days must be between 1 and {MAX_PERMIT_DAYS}")
        claims = {
            "jti": permit_id or new_permit_id(),
            "org": organisation,
            "purposes": list(purposes),
            "datasets": list(datasets),
            "countries": upper,
            "conditions": list(conditions),
        }
        return self._issuer.sign(requester, valid_days * 86400, claims)
