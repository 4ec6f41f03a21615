"""Contract negotiation, both sides, over the persisted DSP state machine.

Provider: a contract request is checked against the current offer (only the purpose may be
narrowed); a request that keeps every purpose gets a counter-offer narrowed to the purpose of the
data permit presented; then the DPO's access policy decides (purpose, permit, requester country
from the trust list, consent, k) and the answer is a signed agreement or a termination with the
policy's reasons. Consumer: requests, accepts a counter-offer that keeps what it asked for,
verifies the provider's signed agreement, and follows the provider's events.

Every move goes through `connector.dataspace.states` inside one transaction (row locked), so an
illegal or concurrent message changes nothing; every decision and move is audited. A message that
cannot be delivered after bounded retries terminates the process on our side. Nothing here sends a
permit anywhere but to the provider it was presented to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit.log import utc_now_text
from connector.compute.cohort_data import CohortFilter
from connector.dataspace import messages as m
from connector.dataspace.identity import PeerIdentity
from connector.dataspace.models import Agreement, Negotiation
from connector.dataspace.offers import (
    OfferMismatch,
    agreement_document,
    dataset_name,
    dataset_terms,
    formats_for,
    narrowed,
    offer_for,
    requested_purpose,
)
from connector.dataspace.peer_client import PeerError, call
from connector.dataspace.states import (
    NEGOTIATION_FINAL,
    IllegalTransition,
    NegotiationState,
    ProcessSides,
    Role,
    next_negotiation_state,
)
from connector.dataspace.trust import Participant, callback_problem
from connector.policy.decision import Decision
from connector.runtime import Runtime

log = logging.getLogger("connector.dataspace")

FollowUp = Callable[[], None]


class DspError(Exception):
    """A DSP request is refused; the router answers with the process's error message type."""

    def __init__(
        self, status: int, code: str, reasons: list[str], provider_pid: str = "", consumer_pid: str = ""
    ):
        super().__init__("; ".join(reasons))
        self.status, self.code, self.reasons = status, code, reasons
        self.provider_pid, self.consumer_pid = provider_pid, consumer_pid


@dataclass(frozen=True)
class NegotiationView(ProcessSides):
    pid: str
    role: str
    peer: str
    peer_pid: str
    peer_address: str  # the peer's DSP base URL (its callback, or its endpoint)
    state: NegotiationState
    dataset: str
    target: str
    purpose: str
    agreement_id: str
    reasons: list[str]
    policy_version: str
    created_at: str
    updated_at: str


def _view(row: Negotiation) -> NegotiationView:
    return NegotiationView(
        pid=row.pid,
        role=row.role,
        peer=row.peer,
        peer_pid=row.peer_pid,
        peer_address=row.peer_address,
        state=NegotiationState(row.state),
        dataset=row.dataset,
        target=row.target,
        purpose=row.purpose,
        agreement_id=row.agreement_id,
        reasons=json.loads(row.reasons),
        policy_version=row.policy_version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def new_pid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _deadline(runtime: Runtime) -> float:
    return time.time() + runtime.settings.dsp_process_timeout_seconds


def _locked(session: Session, pid: str) -> Negotiation | None:
    return session.execute(
        select(Negotiation).where(Negotiation.pid == pid).with_for_update()
    ).scalar_one_or_none()


def _audit(
    runtime: Runtime, row: NegotiationView, action: str, outcome: str, reasons: Sequence[str] = ()
) -> None:
    runtime.audit.record(
        row.peer if row.role == "provider" else runtime.settings.connector_id,
        f"dsp.negotiation.{action}",
        row.pid,
        outcome,
        reasons=list(reasons),
        details={
            "role": row.role,
            "peer": row.peer,
            "state": row.state,
            "dataset": row.dataset,
            "purpose": row.purpose,
            "agreement": row.agreement_id,
            "policy_version": row.policy_version,
        },
    )


def move(
    runtime: Runtime,
    pid: str,
    message: str,
    sender: Role,
    *,
    peer: str | None = None,
    refuse: Callable[[Negotiation], DspError | None] | None = None,
    **changes: Any,
) -> NegotiationView:
    """Apply one message to the negotiation `pid` (ours) and store it; DspError when the process is
    unknown (or another peer's) or `refuse` objects to the locked row, and IllegalTransition when
    its state does not allow the message."""
    with runtime.sessions() as session, session.begin():
        row = _locked(session, pid)
        if row is None or (peer is not None and row.peer != peer):
            raise DspError(404, "unknown_process", [f"no contract negotiation {pid} with you"])
        objection = refuse(row) if refuse is not None else None
        if objection is not None:
            raise objection
        row.state = next_negotiation_state(row.state, message, sender)
        for name, value in changes.items():
            setattr(row, name, json.dumps(value) if name == "reasons" else value)
        row.updated_at = utc_now_text()
        row.deadline = _deadline(runtime)
        view = _view(row)
    return view


def get_negotiation(runtime: Runtime, pid: str, peer: str | None = None) -> NegotiationView:
    with runtime.sessions() as session:
        row = session.get(Negotiation, pid)
        if row is None or (peer is not None and row.peer != peer):
            raise DspError(404, "unknown_process", [f"no contract negotiation {pid} with you"])
        return _view(row)


def list_negotiations(runtime: Runtime, limit: int = 100) -> list[NegotiationView]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Negotiation).order_by(Negotiation.created_at.desc()).limit(limit)
        ).scalars()
        return [_view(row) for row in rows]


def negotiation_message(view: NegotiationView) -> dict[str, Any]:
    return m.negotiation(view.provider_pid, view.consumer_pid, view.state)


def _send(
    runtime: Runtime,
    view: NegotiationView,
    path: str,
    message: dict[str, Any],
    claims: dict[str, Any] | None = None,
) -> None:
    """Deliver a message to the peer; on failure our side terminates (the peer refused or is gone)."""
    try:
        call(runtime, view.peer, "POST", view.peer_address + path, message, claims)
    except PeerError as exc:
        reason = (
            "the peer connector could not be reached"
            if exc.unreachable
            else f"the peer refused our {message['@type']}: {exc}"
        )
        terminate_locally(runtime, view.pid, [reason])
        raise


def terminate_locally(runtime: Runtime, pid: str, reasons: list[str]) -> None:
    """Our side ends the process (the peer is gone, or refused a message); no message is sent."""
    try:
        view = move(runtime, pid, "ContractNegotiationTerminationMessage", "provider", reasons=reasons)
    except IllegalTransition:
        return
    _audit(runtime, view, "terminated", "failure", reasons)


def _step_and_tell(
    runtime: Runtime,
    pid: str,
    message: str,
    sender: Role,
    action: str,
    path: Callable[[NegotiationView], str],
    outgoing: Callable[[NegotiationView], dict[str, Any]],
    **changes: Any,
) -> None:
    """Our own move (the state machine permitting), audited, then its message to the peer; a
    peer that cannot take it ends the process on our side (see `_send`)."""
    try:
        view = move(runtime, pid, message, sender, **changes)
    except IllegalTransition:
        return  # the process moved on meanwhile (terminated, timed out): nothing to say
    _audit(runtime, view, action, "success")
    with contextlib.suppress(PeerError):
        _send(runtime, view, path(view), outgoing(view))


# --- Provider -------------------------------------------------------------------------------------


def check_callback(
    participant: Participant, address: str, provider_pid: str | None, consumer_pid: str | None
) -> None:
    """Refuse (DspError 400 `invalid_callback`, nothing stored) a callback address that is not
    under the peer's own DSP address on the trust list: a peer must not aim us at another host."""
    problem = callback_problem(participant, address)
    if problem is not None:
        log.warning("a peer named a callback address outside its own", extra={"peer": participant.id})
        raise DspError(400, "invalid_callback", [problem], provider_pid or "", consumer_pid or "")


def receive_request(
    runtime: Runtime, peer: PeerIdentity, msg: m.ContractRequestMessage
) -> tuple[NegotiationView, FollowUp]:
    """A contract request (initial or counter); the stored process and the decision to run next."""
    claims = peer.claims
    actor = claims.get("actor")
    actor = actor if isinstance(actor, str) else ""
    permit = claims.get("permit")
    permit = permit if isinstance(permit, str) else ""
    offer_json = json.dumps(msg.offer.model_dump(by_alias=True, exclude_none=True))
    if msg.callbackAddress is not None:
        check_callback(peer.participant, msg.callbackAddress, msg.providerPid, msg.consumerPid)
    if msg.providerPid is None:
        if not msg.callbackAddress:
            raise DspError(
                400,
                "invalid_message",
                ["an initial contract request needs a callbackAddress"],
                consumer_pid=msg.consumerPid,
            )
        if not msg.offer.target:
            raise DspError(
                400,
                "invalid_message",
                ["an initial contract request's offer needs its target"],
                consumer_pid=msg.consumerPid,
            )
        dataset = dataset_name(runtime, msg.offer.target)
        if dataset is None:
            raise DspError(
                404,
                "unknown_dataset",
                [f"no published dataset {msg.offer.target}"],
                consumer_pid=msg.consumerPid,
            )
        now = utc_now_text()
        row = Negotiation(
            pid=new_pid(),
            role="provider",
            peer_pid=msg.consumerPid,
            peer=peer.participant.id,
            peer_address=msg.callbackAddress.rstrip("/"),
            state=next_negotiation_state(NegotiationState.INITIAL, "ContractRequestMessage", "consumer"),
            dataset=dataset,
            target=msg.offer.target,
            offer=offer_json,
            actor=actor[:200],
            permit=permit,
            reasons="[]",
            created_at=now,
            updated_at=now,
            deadline=_deadline(runtime),
        )
        with runtime.sessions() as session, session.begin():
            session.add(row)
            view = _view(row)
    else:
        changes: dict[str, Any] = {"offer": offer_json}
        if actor:
            changes["actor"] = actor[:200]
        if permit:
            changes["permit"] = permit
        view = move(
            runtime,
            msg.providerPid,
            "ContractRequestMessage",
            "consumer",
            peer=peer.participant.id,
            **changes,
        )
    _audit(runtime, view, "requested", "success")
    return view, lambda: provider_decide(runtime, view.pid)


def _terminate_and_tell(
    runtime: Runtime, view: NegotiationView, code: str, reasons: list[str], policy_version: str = ""
) -> None:
    try:
        ended = move(
            runtime,
            view.pid,
            "ContractNegotiationTerminationMessage",
            "provider",
            reasons=reasons,
            policy_version=policy_version,
        )
    except IllegalTransition:
        return
    _audit(runtime, ended, "terminated", "deny", reasons)
    try:
        call(
            runtime,
            ended.peer,
            "POST",
            ended.peer_address + f"/negotiations/{ended.consumer_pid}/termination",
            m.negotiation_termination(ended.provider_pid, ended.consumer_pid, code, reasons),
        )
    except PeerError as exc:
        log.warning("the termination could not be delivered", extra={"process": ended.pid, "error": str(exc)})


def provider_decide(runtime: Runtime, pid: str) -> None:
    """Answer a REQUESTED or ACCEPTED negotiation: counter-offer, agreement or termination."""
    with runtime.sessions() as session:
        row = session.get(Negotiation, pid)
        if row is None or row.state not in (NegotiationState.REQUESTED, NegotiationState.ACCEPTED):
            return
        view, offer, permit, actor = _view(row), json.loads(row.offer), row.permit, row.actor
    participant = runtime.trust.get(view.peer)
    if participant is None:
        _terminate_and_tell(runtime, view, "untrusted_peer", ["the consumer is no longer on the trust list"])
        return
    terms = dataset_terms(runtime, view.dataset)
    if terms is None:
        _terminate_and_tell(
            runtime, view, "no_terms", [f"the policy no longer offers dataset {view.dataset}"]
        )
        return
    ours = offer_for(runtime, view.dataset, terms)
    try:
        purpose = requested_purpose(ours, m.Policy.model_validate(offer), view.target)
    except (OfferMismatch, ValueError) as exc:
        _terminate_and_tell(runtime, view, "offer_mismatch", [str(exc)])
        return
    check = runtime.policy.check_permit(permit or None)
    if purpose is None:
        # The consumer asked for the offer as catalogued: propose the purpose its permit names.
        allowed = [p for p in check.claims.get("purposes", []) if p in {x.code for x in terms.purposes}]
        if check.status != "valid" or len(allowed) != 1:
            reason = (
                f"the data permit presented is not valid ({check.status}: {check.detail})"
                if check.status != "valid"
                else "narrow the offer's purpose to the one you request (operator eq): "
                "the permit does not name exactly one offered purpose"
            )
            _terminate_and_tell(runtime, view, "purpose_required", [reason])
            return
        counter = narrowed(ours, allowed[0], view.target)
        _step_and_tell(
            runtime,
            pid,
            "ContractOfferMessage",
            "provider",
            "offered",
            lambda v: f"/negotiations/{v.consumer_pid}/offers",
            lambda v: m.contract_offer(v.provider_pid, v.consumer_pid, counter),
            offer=json.dumps(counter),
            purpose=allowed[0],
        )
        return
    decision = decide_for_peer(
        runtime,
        view.peer,
        view.dataset,
        purpose,
        actor,
        participant.organisation,
        participant.country,
        permit,
    )
    version = decision.policy_version or ""
    if not decision.allow:
        _terminate_and_tell(runtime, view, "access_denied", list(decision.reasons), version)
        return
    valid_until = float(check.claims.get("expires", time.time() + 86400))
    agreement_id = new_pid()
    document = agreement_document(
        agreement_id,
        ours,
        purpose=purpose,
        target=view.target,
        provider=runtime.settings.connector_id,
        consumer=view.peer,
        country=participant.country,
        valid_until=valid_until,
    )
    signature = sign_agreement(runtime, document)
    with runtime.sessions() as session, session.begin():
        row = _locked(session, pid)
        if row is None:
            return
        try:
            row.state = next_negotiation_state(row.state, "ContractAgreementMessage", "provider")
        except IllegalTransition:
            return
        row.purpose, row.agreement_id, row.policy_version = purpose, agreement_id, version
        row.reasons = json.dumps(list(decision.reasons))
        row.updated_at, row.deadline = utc_now_text(), _deadline(runtime)
        session.add(
            Agreement(
                id=agreement_id,
                negotiation=pid,
                role="provider",
                provider=runtime.settings.connector_id,
                consumer=view.peer,
                dataset=view.dataset,
                target=view.target,
                purpose=purpose,
                actor=actor,
                organisation=participant.organisation,
                country=participant.country,
                formats=json.dumps(formats_for(runtime, view.dataset)),
                document=json.dumps(document),
                signature=signature,
                valid_until=valid_until,
                created_at=utc_now_text(),
            )
        )
        agreed = _view(row)
    _audit(runtime, agreed, "agreed", "allow", list(decision.reasons))
    message = m.contract_agreement(agreed.provider_pid, agreed.consumer_pid, document)
    # The signature travels as an extension property: the consumer can check it against our key
    # on its trust list, and keep it as proof of what was agreed.
    message["agreement"] = {**document, "signature": signature}
    try:
        _send(runtime, agreed, f"/negotiations/{agreed.consumer_pid}/agreement", message)
    except PeerError:
        return


def decide_for_peer(
    runtime: Runtime,
    peer: str,
    dataset: str,
    purpose: str,
    actor: str,
    organisation: str,
    country: str,
    permit: str,
) -> Decision:
    """The access policy's decision on a peer's request, in the stable access-request format: the
    person it acts for, the organisation and country the trust list vouches for, the permit it
    presented, and the dataset's whole cohort (the policy excludes opted-out patients)."""
    from connector.jobs.service import cohort_patients

    return runtime.policy.decide_access(
        {
            "action": "access",
            "dataset": dataset,
            "purpose": purpose,
            "requester": {"id": actor, "organisation": organisation, "country": country},
            "permit": permit or None,
            "cohort": {"size": cohort_patients(runtime, dataset, CohortFilter())},
        },
        actor=peer,
        roles=["peer"],
    )


def sign_agreement(runtime: Runtime, document: dict[str, Any]) -> str:
    """A compact JWS (EdDSA, our key) over the agreement's canonical JSON."""
    payload = {"agreement": document}
    return jwt.encode(
        payload, runtime.signing_key.jws_key, algorithm="EdDSA", headers={"kid": runtime.signing_key.key_id}
    )


def verify_agreement_signature(provider: Participant, document: dict[str, Any], signature: str) -> bool:
    """Whether `signature` is the provider's signature over exactly `document`."""
    from connector.identity.jwks import StaticJwks

    key = StaticJwks({"keys": [{**provider.signing_key, "alg": "EdDSA"}]}, "the trust list").get_signing_key(
        None, "EdDSA"
    )
    try:
        payload = jwt.decode(signature, key, algorithms=["EdDSA"], options={"require": []})
    except jwt.PyJWTError:
        return False
    return payload.get("agreement") == document


def receive_event(
    runtime: Runtime, peer: PeerIdentity, pid: str, msg: m.ContractNegotiationEventMessage
) -> tuple[NegotiationView, FollowUp | None]:
    row = get_negotiation(runtime, pid, peer.participant.id)
    if row.role == "provider":
        if msg.eventType != "ACCEPTED":
            raise IllegalTransition(
                "contract negotiation", row.state, f"event {msg.eventType} from the consumer"
            )
        view = move(runtime, pid, "ACCEPTED", "consumer", peer=peer.participant.id)
        _audit(runtime, view, "accepted", "success")
        return view, lambda: provider_decide(runtime, pid)
    if msg.eventType != "FINALIZED":
        raise IllegalTransition("contract negotiation", row.state, f"event {msg.eventType} from the provider")
    view = move(runtime, pid, "FINALIZED", "provider", peer=peer.participant.id)
    _audit(runtime, view, "finalized", "success")
    return view, None


def receive_verification(runtime: Runtime, peer: PeerIdentity, pid: str) -> tuple[NegotiationView, FollowUp]:
    view = move(runtime, pid, "ContractAgreementVerificationMessage", "consumer", peer=peer.participant.id)
    _audit(runtime, view, "verified", "success")

    def finalize() -> None:
        _step_and_tell(
            runtime,
            pid,
            "FINALIZED",
            "provider",
            "finalized",
            lambda v: f"/negotiations/{v.consumer_pid}/events",
            lambda v: m.negotiation_event(v.provider_pid, v.consumer_pid, "FINALIZED"),
        )

    return view, finalize


def receive_termination(
    runtime: Runtime, peer: PeerIdentity, pid: str, msg: m.ContractNegotiationTerminationMessage
) -> NegotiationView:
    row = get_negotiation(runtime, pid, peer.participant.id)
    sender: Role = "consumer" if row.role == "provider" else "provider"
    reasons = [str(item)[:500] for item in msg.reason][:10] or [
        f"terminated by the {sender} ({msg.code or 'no code'})"
    ]
    view = move(
        runtime,
        pid,
        "ContractNegotiationTerminationMessage",
        sender,
        peer=peer.participant.id,
        reasons=reasons,
    )
    _audit(runtime, view, "terminated", "deny", reasons)
    return view


# --- Consumer -------------------------------------------------------------------------------------


def start_negotiation(
    runtime: Runtime,
    provider: Participant,
    dataset_iri: str,
    offer: dict[str, Any],
    actor: str,
    permit: str,
    purpose: str | None,
) -> NegotiationView:
    """Send an initial contract request for `offer` (narrowed to `purpose` when given) and store
    the process; DspError when the provider refuses it outright."""
    if not provider.dsp:
        raise DspError(400, "no_address", [f"the trust list gives no DSP address for {provider.id}"])
    requested = narrowed(offer, purpose, dataset_iri) if purpose else {**offer, "target": dataset_iri}
    pid, now = new_pid(), utc_now_text()
    row = Negotiation(
        pid=pid,
        role="consumer",
        peer_pid="",
        peer=provider.id,
        peer_address=provider.dsp,
        state=next_negotiation_state(NegotiationState.INITIAL, "ContractRequestMessage", "consumer"),
        dataset="",
        target=dataset_iri,
        offer=json.dumps(requested),
        purpose=purpose or "",
        actor=actor[:200],
        permit="",  # the permit is sent once, to the provider; we keep no copy of it here
        reasons="[]",
        created_at=now,
        updated_at=now,
        deadline=_deadline(runtime),
    )
    with runtime.sessions() as session, session.begin():
        session.add(row)
        opened = _view(row)
    # Audited before sending: the provider's answer may arrive (and be audited) before our call returns.
    _audit(runtime, opened, "requested", "success")
    callback = runtime.settings.public_url.rstrip("/") + "/dsp"
    try:
        answer = call(
            runtime,
            provider.id,
            "POST",
            provider.dsp + "/negotiations/request",
            m.contract_request(pid, requested, callback),
            {"actor": actor, "permit": permit},
        )
        process = m.parse(m.ProcessMessage, answer)
    except (PeerError, m.MessageError) as exc:
        reasons = exc.reasons if isinstance(exc, PeerError) else exc.problems
        terminate_locally(runtime, pid, [f"the provider refused the request: {'; '.join(reasons) or exc}"])
        raise DspError(502, getattr(exc, "code", "invalid_answer"), [str(exc)]) from None
    with runtime.sessions() as session, session.begin():
        stored = _locked(session, pid)
        assert stored is not None
        stored.peer_pid = stored.peer_pid or process.providerPid
        view = _view(stored)
    return view


def _own_request_terms(view_offer: dict[str, Any]) -> dict[str, Any]:
    return {c.get("leftOperand"): c for c in view_offer["permission"][0].get("constraint", [])}


def receive_offer(
    runtime: Runtime, peer: PeerIdentity, pid: str, msg: m.ContractOfferMessage
) -> tuple[NegotiationView, FollowUp]:
    """A provider's counter-offer: accepted (event ACCEPTED) when it keeps every term we asked for
    and only narrows the purpose; else we terminate."""
    with runtime.sessions() as session:
        row = session.get(Negotiation, pid)
        asked = json.loads(row.offer) if row is not None and row.role == "consumer" else None
    if asked is None:
        raise DspError(404, "unknown_process", [f"no contract negotiation {pid} of ours with you"])
    offer = msg.offer.model_dump(by_alias=True, exclude_none=True)
    view = move(
        runtime,
        pid,
        "ContractOfferMessage",
        "provider",
        peer=peer.participant.id,
        offer=json.dumps(offer),
        peer_pid=msg.providerPid,
    )
    _audit(runtime, view, "offered", "success")

    def answer() -> None:
        mine, theirs = _own_request_terms(asked), _own_request_terms(offer)
        acceptable = (
            offer.get("@id") == asked.get("@id")
            and set(mine) == set(theirs)
            and all(theirs[k] == mine[k] for k in mine if k != "purpose")
            and theirs.get("purpose", {}).get("operator") == "eq"
        )
        if not acceptable:
            reasons = ["the counter-offer changes terms we did not ask to change"]
            try:
                ended = move(
                    runtime, pid, "ContractNegotiationTerminationMessage", "consumer", reasons=reasons
                )
            except IllegalTransition:
                return
            _audit(runtime, ended, "terminated", "deny", reasons)
            with contextlib.suppress(PeerError):
                call(
                    runtime,
                    ended.peer,
                    "POST",
                    ended.peer_address + f"/negotiations/{ended.provider_pid}/termination",
                    m.negotiation_termination(
                        ended.provider_pid, ended.consumer_pid, "offer_refused", reasons
                    ),
                )
            return
        _step_and_tell(
            runtime,
            pid,
            "ACCEPTED",
            "consumer",
            "accepted",
            lambda v: f"/negotiations/{v.provider_pid}/events",
            lambda v: m.negotiation_event(v.provider_pid, v.consumer_pid, "ACCEPTED"),
            purpose=str(theirs["purpose"]["rightOperand"]),
        )

    return view, answer


def receive_agreement(
    runtime: Runtime,
    peer: PeerIdentity,
    pid: str,
    msg: m.ContractAgreementMessage,
    raw_agreement: dict[str, Any],
) -> tuple[NegotiationView, FollowUp]:
    """The provider's agreement: checked (ours, signed by the provider, what we asked for), stored,
    then verified back to the provider."""
    row = get_negotiation(runtime, pid, peer.participant.id)
    if row.role != "consumer":
        raise IllegalTransition("contract negotiation", row.state, "ContractAgreementMessage to the provider")
    # The signature covers the agreement exactly as the provider wrote it, so check the raw JSON.
    agreement = {key: value for key, value in raw_agreement.items() if key != "signature"}
    signature = raw_agreement.get("signature")
    problems = []
    if agreement.get("assigner") != peer.participant.id:
        problems.append("the agreement's assigner is not the provider")
    if agreement.get("assignee") != runtime.settings.connector_id:
        problems.append("the agreement's assignee is not this connector")
    if agreement.get("target") != row.target:
        problems.append("the agreement is for another dataset than we asked for")
    if not isinstance(signature, str) or not verify_agreement_signature(
        peer.participant, agreement, signature
    ):
        problems.append("the agreement carries no valid signature of the provider")
    if problems:
        terminate_locally(runtime, pid, [f"the provider's agreement was refused: {p}" for p in problems])
        raise DspError(400, "invalid_agreement", problems, provider_pid=msg.providerPid, consumer_pid=pid)
    purpose = next(
        (
            c.rightOperand
            for rule in msg.agreement.permission
            for c in rule.constraint
            if c.leftOperand == "purpose"
        ),
        row.purpose,
    )
    until = next(
        (
            c.rightOperand
            for rule in msg.agreement.permission
            for c in rule.constraint
            if c.leftOperand == "dateTime"
        ),
        None,
    )
    with runtime.sessions() as session, session.begin():
        stored = _locked(session, pid)
        assert stored is not None
        stored.state = next_negotiation_state(stored.state, "ContractAgreementMessage", "provider")
        stored.agreement_id, stored.purpose = msg.agreement.id, str(purpose)
        stored.peer_pid = msg.providerPid
        stored.updated_at, stored.deadline = utc_now_text(), _deadline(runtime)
        session.add(
            Agreement(
                id=msg.agreement.id,
                negotiation=pid,
                role="consumer",
                provider=peer.participant.id,
                consumer=runtime.settings.connector_id,
                dataset="",
                target=row.target,
                purpose=str(purpose),
                actor=stored.actor,
                organisation=peer.participant.organisation,
                country=peer.participant.country,
                formats="[]",
                document=json.dumps(agreement),
                signature=signature or "",
                valid_until=_epoch(until),
                created_at=utc_now_text(),
            )
        )
        view = _view(stored)
    _audit(runtime, view, "agreed", "success")

    def verify() -> None:
        _step_and_tell(
            runtime,
            pid,
            "ContractAgreementVerificationMessage",
            "consumer",
            "verified",
            lambda v: f"/negotiations/{v.provider_pid}/agreement/verification",
            lambda v: m.agreement_verification(v.provider_pid, v.consumer_pid),
        )

    return view, verify


def _epoch(value: Any) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _verification_sent(row: Negotiation) -> DspError | None:
    if row.role == "consumer" and row.state == NegotiationState.VERIFIED:
        return DspError(
            409,
            "verification_sent",
            ["we have verified the agreement and the provider may already have finalized it"],
        )
    return None


def terminate(runtime: Runtime, pid: str, reasons: list[str]) -> NegotiationView:
    """Our side ends a live negotiation and tells the peer (best effort).

    A consumer that has sent its verification may no longer terminate: the provider may finalize
    at any moment, and a termination crossing its FINALIZED event would leave the two sides in
    different final states for good. Refused with 409 `verification_sent`; the provider's
    FINALIZED (or its timeout) ends the process."""
    row = get_negotiation(runtime, pid)
    sender: Role = "provider" if row.role == "provider" else "consumer"
    view = move(
        runtime,
        pid,
        "ContractNegotiationTerminationMessage",
        sender,
        refuse=_verification_sent,
        reasons=reasons,
    )
    _audit(runtime, view, "terminated", "success", reasons)
    if view.peer_pid:
        target = view.consumer_pid if view.role == "provider" else view.provider_pid
        try:
            call(
                runtime,
                view.peer,
                "POST",
                view.peer_address + f"/negotiations/{target}/termination",
                m.negotiation_termination(view.provider_pid, view.consumer_pid, "terminated", reasons),
            )
        except PeerError as exc:
            log.warning("the termination could not be delivered", extra={"process": pid, "error": str(exc)})
    return view


def expire_negotiations(runtime: Runtime, now: float | None = None) -> list[str]:
    """Terminate every live negotiation past its deadline (the peer went silent); their pids."""
    now = time.time() if now is None else now
    with runtime.sessions() as session:
        pids = list(
            session.execute(
                select(Negotiation.pid).where(
                    Negotiation.state.not_in(NEGOTIATION_FINAL), Negotiation.deadline < now
                )
            ).scalars()
        )
    for pid in pids:
        terminate_locally(runtime, pid, ["timed out: the peer did not answer in time"])
    return pids
