"""The transfer process, both sides, under a finalized contract agreement.

Provider: a transfer request names an agreement of this consumer and one of the formats agreed;
before starting, the access policy decides again (the permit may have been revoked, patients may
have opted out, the cohort may have fallen below k). `ComputeToData` then hands the consumer the
jobs endpoint and a token bound to the agreement; `EncryptedDataset-PULL` (only where the policy
allows copies) hands it the copy endpoint, from which it pulls the encrypted objects and the study
keys re-wrapped to its own key. Consumer: requests, keeps the data address it is given, and for a
copy pulls, verifies and stores it, then completes the transfer.

States move only through `connector.dataspace.states`; a token handed out works only while its
transfer is STARTED. Nothing here writes plaintext or sends a study key unwrapped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit.log import utc_now_text
from connector.compute.cohort_data import CohortFilter, select_studies
from connector.dataspace import access_tokens
from connector.dataspace import messages as m
from connector.dataspace.identity import PeerIdentity
from connector.dataspace.models import Agreement, Negotiation, Transfer
from connector.dataspace.negotiations import DspError, FollowUp, check_callback, decide_for_peer, new_pid
from connector.dataspace.peer_client import PeerError, call
from connector.dataspace.states import (
    TRANSFER_FINAL,
    IllegalTransition,
    NegotiationState,
    ProcessSides,
    Role,
    TransferState,
    next_transfer_state,
)
from connector.dataspace.trust import callback_problem
from connector.runtime import Runtime

log = logging.getLogger("connector.dataspace")
# The messages a transfer process receives after its request, one per step (see receive).
StepMessage = (
    m.TransferStartMessage
    | m.TransferCompletionMessage
    | m.TransferSuspensionMessage
    | m.TransferTerminationMessage
)
_NEVER = 1e18  # a deadline no clock reaches (kept finite: every database stores it)


@dataclass(frozen=True)
class TransferView(ProcessSides):
    pid: str
    role: str
    peer: str
    peer_pid: str
    peer_address: str  # the peer's DSP base URL (its callback, or its endpoint)
    agreement_id: str
    format: str
    state: TransferState
    data_address: dict[str, Any] | None
    reasons: list[str]
    created_at: str
    updated_at: str


def _view(row: Transfer) -> TransferView:
    return TransferView(
        pid=row.pid,
        role=row.role,
        peer=row.peer,
        peer_pid=row.peer_pid,
        peer_address=row.peer_address,
        agreement_id=row.agreement_id,
        format=row.format,
        state=TransferState(row.state),
        data_address=json.loads(row.data_address) if row.data_address else None,
        reasons=json.loads(row.reasons),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _deadline(runtime: Runtime, state: str) -> float:
    # Only a requested transfer waits on the other side; a started one lives as long as its agreement.
    if state == TransferState.REQUESTED:
        return time.time() + runtime.settings.dsp_process_timeout_seconds
    return _NEVER if state not in TRANSFER_FINAL else time.time()


def _locked(session: Session, pid: str) -> Transfer | None:
    return session.execute(select(Transfer).where(Transfer.pid == pid).with_for_update()).scalar_one_or_none()


def _audit(
    runtime: Runtime, view: TransferView, action: str, outcome: str, reasons: list[str] | None = None
) -> None:
    runtime.audit.record(
        view.peer if view.role == "provider" else runtime.settings.connector_id,
        f"dsp.transfer.{action}",
        view.pid,
        outcome,
        reasons=list(reasons or []),
        details={
            "role": view.role,
            "peer": view.peer,
            "state": view.state,
            "agreement": view.agreement_id,
            "format": view.format,
        },
    )


def move(
    runtime: Runtime, pid: str, message: str, sender: Role, *, peer: str | None = None, **changes: Any
) -> TransferView:
    with runtime.sessions() as session, session.begin():
        row = _locked(session, pid)
        if row is None or (peer is not None and row.peer != peer):
            raise DspError(404, "unknown_process", [f"no transfer process {pid} with you"])
        row.state = next_transfer_state(row.state, message, sender)
        for name, value in changes.items():
            setattr(row, name, json.dumps(value) if name in ("reasons", "data_address") else value)
        row.updated_at = utc_now_text()
        row.deadline = _deadline(runtime, row.state)
        return _view(row)


def get_transfer(runtime: Runtime, pid: str, peer: str | None = None) -> TransferView:
    with runtime.sessions() as session:
        row = session.get(Transfer, pid)
        if row is None or (peer is not None and row.peer != peer):
            raise DspError(404, "unknown_process", [f"no transfer process {pid} with you"])
        return _view(row)


def list_transfers(runtime: Runtime, limit: int = 100) -> list[TransferView]:
    with runtime.sessions() as session:
        rows = session.execute(select(Transfer).order_by(Transfer.created_at.desc()).limit(limit)).scalars()
        return [_view(row) for row in rows]


def process_message(view: TransferView) -> dict[str, Any]:
    return m.transfer_process(view.provider_pid, view.consumer_pid, view.state)


def _tell(runtime: Runtime, view: TransferView, path: str, message: dict[str, Any]) -> None:
    """Deliver a message; a peer that is gone or refuses ends the transfer on our side."""
    try:
        call(runtime, view.peer, "POST", view.peer_address + path, message)
    except PeerError as exc:
        reason = (
            "the peer connector could not be reached"
            if exc.unreachable
            else f"the peer refused our {message['@type']}: {exc}"
        )
        try:
            ended = move(runtime, view.pid, "TransferTerminationMessage", "provider", reasons=[reason])
            _audit(runtime, ended, "terminated", "failure", [reason])
        except IllegalTransition:
            pass


def _peer_path(view: TransferView) -> str:
    return f"/transfers/{view.consumer_pid if view.role == 'provider' else view.provider_pid}"


# --- Provider -------------------------------------------------------------------------------------


def receive_request(
    runtime: Runtime, peer: PeerIdentity, msg: m.TransferRequestMessage
) -> tuple[TransferView, FollowUp]:
    check_callback(peer.participant, msg.callbackAddress, None, msg.consumerPid)
    with runtime.sessions() as session:
        agreement = session.get(Agreement, msg.agreementId)
        negotiation = session.get(Negotiation, agreement.negotiation) if agreement else None
    if agreement is None or agreement.role != "provider" or agreement.consumer != peer.participant.id:
        raise DspError(
            404,
            "unknown_agreement",
            [f"no contract agreement {msg.agreementId} with you"],
            consumer_pid=msg.consumerPid,
        )
    if negotiation is None or negotiation.state != NegotiationState.FINALIZED:
        raise DspError(
            400,
            "agreement_not_final",
            ["the agreement's negotiation is not FINALIZED"],
            consumer_pid=msg.consumerPid,
        )
    if agreement.valid_until < time.time():
        raise DspError(
            400, "agreement_expired", ["the contract agreement has expired"], consumer_pid=msg.consumerPid
        )
    formats = json.loads(agreement.formats)
    if msg.format not in formats:
        raise DspError(
            400,
            "format_not_agreed",
            [f"format {msg.format} is not agreed for this dataset (agreed: {', '.join(formats)})"],
            consumer_pid=msg.consumerPid,
        )
    now = utc_now_text()
    row = Transfer(
        pid=new_pid(),
        role="provider",
        peer_pid=msg.consumerPid,
        peer=peer.participant.id,
        peer_address=msg.callbackAddress.rstrip("/"),
        agreement_id=agreement.id,
        format=msg.format,
        state=next_transfer_state(TransferState.INITIAL, "TransferRequestMessage", "consumer"),
        data_address="",
        reasons="[]",
        created_at=now,
        updated_at=now,
        deadline=_deadline(runtime, TransferState.REQUESTED),
    )
    with runtime.sessions() as session, session.begin():
        session.add(row)
        view = _view(row)
    _audit(runtime, view, "requested", "success")
    return view, lambda: provider_start(runtime, view.pid)


def _decide_again(
    runtime: Runtime, agreement: Agreement, negotiation: Negotiation, copy: bool
) -> tuple[bool, list[str]]:
    decision = decide_for_peer(
        runtime,
        agreement.consumer,
        agreement.dataset,
        agreement.purpose,
        negotiation.actor,
        agreement.organisation,
        agreement.country,
        negotiation.permit,
    )
    if not decision.allow:
        return False, list(decision.reasons)
    if copy and not runtime.policy.copies_allowed(agreement.dataset):
        return False, [f"the policy does not allow copies of dataset {agreement.dataset}"]
    return True, list(decision.reasons)


def provider_start(runtime: Runtime, pid: str) -> None:
    """Decide again and start the transfer (or terminate it with the policy's reasons)."""
    view = get_transfer(runtime, pid)
    with runtime.sessions() as session:
        agreement = session.get(Agreement, view.agreement_id)
        negotiation = session.get(Negotiation, agreement.negotiation) if agreement else None
    if agreement is None or negotiation is None:
        return
    copy = view.format == m.ENCRYPTED_PULL
    allowed, reasons = _decide_again(runtime, agreement, negotiation, copy)
    if not allowed:
        try:
            ended = move(runtime, pid, "TransferTerminationMessage", "provider", reasons=reasons)
        except IllegalTransition:
            return
        _audit(runtime, ended, "terminated", "deny", reasons)
        _tell(
            runtime,
            ended,
            _peer_path(ended) + "/termination",
            m.transfer_termination(ended.provider_pid, ended.consumer_pid, "access_denied", reasons),
        )
        return
    token, expires = access_tokens.issue(runtime, agreement, pid, "copy" if copy else "jobs")
    base = runtime.settings.public_url.rstrip("/")
    properties = {
        "authorization": token,
        "authType": "bearer",
        "agreementId": agreement.id,
        "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
    }
    if copy:
        address = m.data_address(f"{base}/dsp/transfers/{pid}/copy", properties)
    else:
        properties.update({"dataset": agreement.dataset, "purpose": agreement.purpose})
        address = m.data_address(base, properties)
    try:
        started = move(runtime, pid, "TransferStartMessage", "provider")
    except IllegalTransition:
        return
    _audit(runtime, started, "started", "allow", reasons)
    _tell(
        runtime,
        started,
        _peer_path(started) + "/start",
        m.transfer_start(started.provider_pid, started.consumer_pid, address),
    )


def copy_studies(runtime: Runtime, dataset: str) -> list[str]:
    """The studies a copy may hold: those of patients the consent policy includes, now."""
    included = runtime.policy.cohort(dataset).included
    return [s.study_uid for s in select_studies(runtime, dataset, CohortFilter(), included)]


def copy_of(runtime: Runtime, access: access_tokens.AgreementAccess, recipient_id: str) -> dict[str, Any]:
    """The copy manifest of a started EncryptedDataset-PULL transfer: the consented cohort's
    objects, keys re-wrapped to the consumer's exchange key from the trust list."""
    from connector.crypto.peer_wrap import public_key_from_jwk
    from connector.dataspace.encrypted_copy import copy_manifest

    participant = runtime.trust.get(recipient_id)
    if participant is None or participant.exchange_key is None:
        raise DspError(400, "no_exchange_key", ["the trust list gives the consumer no exchange key"])
    studies = copy_studies(runtime, access.dataset)
    manifest = copy_manifest(
        runtime, access.dataset, studies, public_key_from_jwk(participant.exchange_key), access.transfer_pid
    )
    runtime.audit.record(
        recipient_id,
        "dsp.transfer.copy",
        access.transfer_pid,
        "success",
        details={
            "dataset": access.dataset,
            "studies": len(studies),
            "objects": len(manifest.get("objects", [])),
        },
    )
    return manifest


# --- Both sides -------------------------------------------------------------------------------------


def receive(
    runtime: Runtime, peer: PeerIdentity, pid: str, message: StepMessage
) -> tuple[TransferView, FollowUp | None]:
    """A start, completion, suspension or termination message for transfer `pid` (ours)."""
    row = get_transfer(runtime, pid, peer.participant.id)
    sender: Role = "consumer" if row.role == "provider" else "provider"
    kind = message.type
    changes: dict[str, Any] = {}
    reasons = [str(r)[:500] for r in getattr(message, "reason", [])][:10]
    if reasons:
        changes["reasons"] = reasons
    if isinstance(message, m.TransferStartMessage) and sender == "provider":
        if message.dataAddress is None:
            raise DspError(
                400,
                "invalid_message",
                ["a transfer start for a pull transfer needs a dataAddress"],
                message.providerPid,
                message.consumerPid,
            )
        changes["data_address"] = message.dataAddress.model_dump(by_alias=True, exclude_none=True)
        changes["peer_pid"] = message.providerPid
    view = move(runtime, pid, kind, sender, peer=peer.participant.id, **changes)
    _audit(runtime, view, kind.removeprefix("Transfer").removesuffix("Message").lower(), "success", reasons)
    if view.role == "provider" and kind == "TransferStartMessage":
        # The consumer asks to resume: the provider decides again and starts with a fresh token.
        return view, lambda: provider_start(runtime, pid)
    if view.role == "consumer" and view.state == TransferState.STARTED and view.format == m.ENCRYPTED_PULL:
        return view, lambda: pull_copy(runtime, pid)
    return view, None


def end(runtime: Runtime, pid: str, kind: str, reasons: list[str]) -> TransferView:
    """Our side completes, suspends or terminates a transfer and tells the peer."""
    row = get_transfer(runtime, pid)
    sender: Role = "provider" if row.role == "provider" else "consumer"
    view = move(runtime, pid, kind, sender, reasons=reasons)
    _audit(runtime, view, kind.removeprefix("Transfer").removesuffix("Message").lower(), "success", reasons)
    path = _peer_path(view)
    if kind == "TransferCompletionMessage":
        message = m.transfer_completion(view.provider_pid, view.consumer_pid)
        path += "/completion"
    elif kind == "TransferSuspensionMessage":
        message = m.transfer_suspension(view.provider_pid, view.consumer_pid, "suspended", reasons)
        path += "/suspension"
    else:
        message = m.transfer_termination(view.provider_pid, view.consumer_pid, "terminated", reasons)
        path += "/termination"
    try:
        call(runtime, view.peer, "POST", view.peer_address + path, message)
    except PeerError as exc:
        log.warning("the transfer message could not be delivered", extra={"process": pid, "error": str(exc)})
    return view


def resume(runtime: Runtime, pid: str) -> TransferView:
    """The consumer asks the provider to start a suspended transfer again (the provider decides
    again and answers with a start message carrying a fresh token)."""
    view = get_transfer(runtime, pid)
    if view.role != "consumer":
        raise DspError(400, "not_consumer", ["only the consumer asks to resume; a provider starts"])
    move(runtime, pid, "TransferStartMessage", "consumer")
    try:
        call(
            runtime,
            view.peer,
            "POST",
            view.peer_address + _peer_path(view) + "/start",
            m.transfer_start(view.provider_pid, view.consumer_pid),
        )
    except PeerError as exc:
        raise DspError(502, exc.code, exc.reasons or [str(exc)]) from None
    _audit(runtime, view, "resume", "success")
    return get_transfer(runtime, pid)


# --- Consumer -------------------------------------------------------------------------------------


def start_transfer(runtime: Runtime, agreement_id: str, fmt: str) -> TransferView:
    """Request a transfer under one of our agreements; DspError when the provider refuses."""
    with runtime.sessions() as session:
        agreement = session.get(Agreement, agreement_id)
        negotiation = session.get(Negotiation, agreement.negotiation) if agreement else None
    if agreement is None or agreement.role != "consumer" or negotiation is None:
        raise DspError(404, "unknown_agreement", [f"no contract agreement {agreement_id} of ours"])
    if negotiation.state != NegotiationState.FINALIZED:
        raise DspError(409, "agreement_not_final", [f"the negotiation is {negotiation.state}, not FINALIZED"])
    pid, now = new_pid(), utc_now_text()
    with runtime.sessions() as session, session.begin():
        session.add(
            Transfer(
                pid=pid,
                role="consumer",
                peer_pid="",
                peer=agreement.provider,
                peer_address=negotiation.peer_address,
                agreement_id=agreement_id,
                format=fmt,
                state=next_transfer_state(TransferState.INITIAL, "TransferRequestMessage", "consumer"),
                data_address="",
                reasons="[]",
                created_at=now,
                updated_at=now,
                deadline=_deadline(runtime, TransferState.REQUESTED),
            )
        )
    _audit(runtime, get_transfer(runtime, pid), "requested", "success")
    callback = runtime.settings.public_url.rstrip("/") + "/dsp"
    try:
        answer = call(
            runtime,
            agreement.provider,
            "POST",
            negotiation.peer_address + "/transfers/request",
            m.transfer_request(pid, agreement_id, fmt, callback),
        )
        process = m.parse(m.ProcessMessage, answer)
    except (PeerError, m.MessageError) as exc:
        reasons = exc.reasons if isinstance(exc, PeerError) else exc.problems
        with contextlib.suppress(IllegalTransition):
            move(
                runtime,
                pid,
                "TransferTerminationMessage",
                "consumer",
                reasons=[f"the provider refused the request: {'; '.join(reasons)}"],
            )
        raise DspError(502, getattr(exc, "code", "invalid_answer"), [str(exc)]) from None
    with runtime.sessions() as session, session.begin():
        stored = _locked(session, pid)
        assert stored is not None
        if not stored.peer_pid:
            stored.peer_pid = process.providerPid
        view = _view(stored)
    return view


def pull_copy(runtime: Runtime, pid: str) -> None:
    """Pull a started EncryptedDataset-PULL transfer into our store, then complete it."""
    import httpx

    from connector.dataspace.encrypted_copy import import_copy

    view = get_transfer(runtime, pid)
    address = m.DataAddress.model_validate(view.data_address or {})
    # The provider names the copy endpoint: it must be under its own DSP address on the trust list,
    # else a provider could aim our GETs (and its token) at any host.
    problem = callback_problem(runtime.trust.get(view.peer), str(address.endpoint or ""))
    if problem is not None:
        with contextlib.suppress(IllegalTransition, DspError):
            end(runtime, pid, "TransferTerminationMessage", [f"the copy endpoint is refused: {problem}"])
        return
    token = address.property("authorization") or ""
    headers = {"Authorization": f"Bearer {token}"}
    timeout = runtime.settings.dsp_request_timeout_seconds
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, headers=headers) as client:
            response = client.get(str(address.endpoint))
            response.raise_for_status()
            manifest = response.json()

            def fetch(key: str) -> bytes:
                got = client.get(f"{address.endpoint}/objects/{key}")
                got.raise_for_status()
                return got.content

            summary = import_copy(runtime, manifest, fetch, pid.removeprefix("urn:uuid:"))
    except Exception as exc:  # any failure: nothing of the copy is kept (import_copy guarantees it)
        reason = f"the copy could not be pulled: {exc}"[:500]
        with contextlib.suppress(IllegalTransition, DspError):
            end(runtime, pid, "TransferTerminationMessage", [reason])
        return
    runtime.audit.record(
        runtime.settings.connector_id,
        "dsp.transfer.pulled",
        pid,
        "success",
        details={"objects": summary.objects, "bytes": summary.bytes, "studies": summary.studies},
    )
    with contextlib.suppress(IllegalTransition, DspError):
        end(runtime, pid, "TransferCompletionMessage", [])


def expire_transfers(runtime: Runtime, now: float | None = None) -> list[str]:
    """Terminate requested transfers whose peer went silent past the deadline."""
    now = time.time() if now is None else now
    with runtime.sessions() as session:
        pids = list(
            session.execute(
                select(Transfer.pid).where(Transfer.state == TransferState.REQUESTED, Transfer.deadline < now)
            ).scalars()
        )
    for pid in pids:
        try:
            view = move(
                runtime,
                pid,
                "TransferTerminationMessage",
                "provider",
                reasons=["timed out: the peer did not answer in time"],
            )
            _audit(runtime, view, "terminated", "failure", ["timed out"])
        except IllegalTransition:
            continue
    return pids
