"""The tokens a started transfer hands the consumer: a JWT signed by this connector, bound to one
agreement and one transfer process, for the jobs API (ComputeToData) or the copy endpoints
(EncryptedDataset-PULL).

A token is honoured only while its transfer is STARTED, so suspending, completing or terminating
the transfer revokes it at once. Tokens from this connector's own key that are not bound to a
live transfer are refused everywhere. Nothing here logs a token.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import jwt

from connector.dataspace.models import Agreement, Transfer
from connector.dataspace.states import TransferState
from connector.identity.errors import ForbiddenError
from connector.identity.principal import Principal
from connector.runtime import Runtime

Scope = Literal["jobs", "copy"]


class AgreementInactive(ForbiddenError):
    """The token is ours but its transfer is not live (or is not a transfer token at all)."""

    code = "agreement_inactive"


@dataclass(frozen=True)
class AgreementAccess:
    agreement_id: str
    transfer_pid: str
    dataset: str
    purpose: str
    scope: str


def issue(runtime: Runtime, agreement: Agreement, transfer_pid: str, scope: Scope) -> tuple[str, int]:
    """A token for `scope` under `agreement`, and its expiry (never past the agreement's end)."""
    now = int(time.time())
    expires = int(min(now + runtime.settings.dsp_access_token_seconds, agreement.valid_until))
    claims = {
        "iss": runtime.settings.connector_id,
        "aud": runtime.settings.audience,
        "sub": agreement.actor or agreement.consumer,
        "roles": ["researcher"],
        "org": agreement.organisation,
        "country": agreement.country,
        "agreement": agreement.id,
        "transfer": transfer_pid,
        "peer": agreement.consumer,
        "scope": scope,
        "iat": now,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(
        claims, runtime.signing_key.jws_key, algorithm="EdDSA", headers={"kid": runtime.signing_key.key_id}
    )
    return token, expires


def is_agreement_token(runtime: Runtime, principal: Principal) -> bool:
    return principal.issuer == runtime.settings.connector_id


def check(runtime: Runtime, principal: Principal, scope: Scope) -> AgreementAccess:
    """The agreement a token of ours grants `scope` under; ForbiddenError unless its transfer is
    live, is ours as provider, and belongs to that agreement."""
    claims = principal.claims
    agreement_id, transfer_pid = claims.get("agreement"), claims.get("transfer")
    if not isinstance(agreement_id, str) or not isinstance(transfer_pid, str) or claims.get("scope") != scope:
        raise AgreementInactive(f"this token does not grant {scope} under a contract agreement")
    with runtime.sessions() as session:
        transfer = session.get(Transfer, transfer_pid)
        agreement = session.get(Agreement, agreement_id)
    if (
        transfer is None
        or agreement is None
        or transfer.role != "provider"
        or transfer.agreement_id != agreement_id
    ):
        raise AgreementInactive("the transfer this token was issued for does not exist")
    if transfer.state != TransferState.STARTED:
        raise AgreementInactive(f"the transfer this token was issued for is {transfer.state}, not STARTED")
    if agreement.valid_until < time.time():
        raise AgreementInactive("the contract agreement has expired")
    return AgreementAccess(agreement.id, transfer.pid, agreement.dataset, agreement.purpose, scope)
