"""The Dataspace Protocol endpoints (HTTPS binding, DSP 2025-1) under `/dsp`, and the version
document at `/.well-known/dspace-version`.

Every `/dsp` request must carry a peer identity token (connector.dataspace.identity); these
routes are therefore outside the role table: a peer is authenticated by the trust list, not by
an OIDC role. Each body is parsed here (invalid JSON, schema faults, unknown processes, illegal
transitions and refusals all answer with the protocol's error message and change nothing); the
work that follows an answer (a decision, the next message) runs after the response is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from connector.api.security import public, runtime_of
from connector.dataspace import access_tokens, negotiations, offers, transfers
from connector.dataspace import messages as m
from connector.dataspace.identity import PeerAuthError, PeerIdentity, verify_peer
from connector.dataspace.negotiations import DspError
from connector.dataspace.states import IllegalTransition
from connector.identity.errors import AuthError, ForbiddenError
from connector.runtime import Runtime

log = logging.getLogger("connector.dataspace")
router = APIRouter(tags=["dataspace protocol"], dependencies=[Depends(public())])
Pid = Annotated[str, Path(min_length=1, max_length=256)]
_JSON = "application/json"

Handler = Callable[[Runtime, PeerIdentity, Any], tuple[dict[str, Any], int, Callable[[], None] | None]]


def _error(
    kind: str, status: int, code: str, reasons: list[str], provider_pid: str = "", consumer_pid: str = ""
) -> JSONResponse:
    if kind == "catalog":
        body = m.catalog_error(code, reasons)
    elif kind == "negotiation":
        body = m.negotiation_error(provider_pid, consumer_pid, code, reasons)
    else:
        body = m.transfer_error(provider_pid, consumer_pid, code, reasons)
    return JSONResponse(body, status_code=status, media_type=_JSON)


async def _handle(
    request: Request, background: BackgroundTasks, kind: str, handler: Handler, pid: str = ""
) -> Response:
    runtime = runtime_of(request)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return _error(kind, 400, "invalid_json", ["the body is not valid JSON"], *_pids(kind, pid, None))
    try:
        peer = await run_in_threadpool(
            verify_peer, runtime, runtime.trust, request.headers.get("authorization")
        )
    except PeerAuthError as exc:
        log.warning("peer authentication failed", extra={"reason": exc.code, "path": request.url.path})
        return _error(kind, 401, exc.code, [exc.reason], *_pids(kind, pid, body))
    try:
        answer, status, follow_up = await run_in_threadpool(handler, runtime, peer, body)
    except m.MessageError as exc:
        return _error(kind, 400, "invalid_message", exc.problems, *_pids(kind, pid, body))
    except IllegalTransition as exc:
        return _error(kind, 409, "illegal_transition", [str(exc)], *_pids(kind, pid, body))
    except DspError as exc:
        provider_pid, consumer_pid = _pids(kind, pid, body)
        return _error(
            kind,
            exc.status,
            exc.code,
            exc.reasons,
            exc.provider_pid or provider_pid,
            exc.consumer_pid or consumer_pid,
        )
    if follow_up is not None:
        background.add_task(_safely, follow_up)
    return (
        JSONResponse(answer, status_code=status, media_type=_JSON) if answer else Response(status_code=status)
    )


def _pids(kind: str, pid: str, body: Any) -> tuple[str, str]:
    """Best-effort process ids for an error message: from the body, else the path's id."""
    if kind == "catalog":
        return "", ""
    given = body if isinstance(body, dict) else {}
    provider = given.get("providerPid") if isinstance(given.get("providerPid"), str) else ""
    consumer = given.get("consumerPid") if isinstance(given.get("consumerPid"), str) else ""
    return provider or pid, consumer or pid


def _safely(follow_up: Callable[[], None]) -> None:
    try:
        follow_up()
    except Exception:  # a follow-up must never take the service down; the process times out instead
        log.exception("a DSP follow-up failed")


# --- Version and catalog ----------------------------------------------------------------------------


@router.get("/.well-known/dspace-version", summary="The DSP versions this connector speaks")
def version(request: Request) -> JSONResponse:
    return JSONResponse(m.version_document("/dsp"), media_type=_JSON)


@router.post("/dsp/catalog/request", summary="DSP catalog request")
async def catalog_request(request: Request, background: BackgroundTasks) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        m.parse(m.CatalogRequestMessage, body)
        return offers.dsp_catalog(runtime), 200, None

    return await _handle(request, background, "catalog", handler)


@router.get("/dsp/catalog/datasets/{dataset:path}", summary="DSP dataset request")
async def dataset_request(request: Request, background: BackgroundTasks, dataset: str) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        found = offers.dsp_dataset(runtime, dataset)
        if found is None:
            raise DspError(404, "unknown_dataset", [f"no published dataset {dataset}"])
        return found, 200, None

    return await _handle(request, background, "catalog", handler)


# --- Contract negotiation -----------------------------------------------------------------------------


def _negotiation_answer(view: negotiations.NegotiationView, status: int = 200) -> tuple[dict[str, Any], int]:
    return negotiations.negotiation_message(view), status


@router.get("/dsp/negotiations/{pid}", summary="A contract negotiation's state")
async def get_negotiation(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        return (*_negotiation_answer(negotiations.get_negotiation(runtime, pid, peer.participant.id)), None)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post("/dsp/negotiations/request", summary="Initial contract request (to the provider)")
async def negotiation_request(request: Request, background: BackgroundTasks) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.ContractRequestMessage, body)
        if msg.providerPid is not None:
            raise DspError(
                400,
                "invalid_message",
                [
                    "an initial request has no providerPid; "
                    "counter-requests go to /negotiations/{providerPid}/request"
                ],
                consumer_pid=msg.consumerPid,
            )
        view, follow_up = negotiations.receive_request(runtime, peer, msg)
        return (*_negotiation_answer(view, 201), follow_up)

    return await _handle(request, background, "negotiation", handler)


@router.post("/dsp/negotiations/offers", summary="Initial contract offer (to the consumer)")
async def negotiation_initial_offer(request: Request, background: BackgroundTasks) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        msg = m.parse(m.ContractOfferMessage, body)
        raise DspError(
            400,
            "unsolicited_offer",
            ["this connector does not accept unsolicited offers: request one from the catalog"],
            provider_pid=msg.providerPid,
        )

    return await _handle(request, background, "negotiation", handler)


@router.post("/dsp/negotiations/{pid}/request", summary="Counter contract request (to the provider)")
async def negotiation_counter_request(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.ContractRequestMessage, body)
        if msg.providerPid != pid:
            raise DspError(400, "invalid_message", ["providerPid must be the process in the path"])
        view, follow_up = negotiations.receive_request(runtime, peer, msg)
        return (*_negotiation_answer(view), follow_up)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post("/dsp/negotiations/{pid}/offers", summary="Counter-offer (to the consumer)")
async def negotiation_offer(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.ContractOfferMessage, body)
        view, follow_up = negotiations.receive_offer(runtime, peer, pid, msg)
        return (*_negotiation_answer(view), follow_up)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post("/dsp/negotiations/{pid}/events", summary="Negotiation event (ACCEPTED, FINALIZED)")
async def negotiation_event(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.ContractNegotiationEventMessage, body)
        view, follow_up = negotiations.receive_event(runtime, peer, pid, msg)
        return (*_negotiation_answer(view), follow_up)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post("/dsp/negotiations/{pid}/agreement", summary="Contract agreement (to the consumer)")
async def negotiation_agreement(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.ContractAgreementMessage, body)
        view, follow_up = negotiations.receive_agreement(runtime, peer, pid, msg, body["agreement"])
        return (*_negotiation_answer(view), follow_up)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post(
    "/dsp/negotiations/{pid}/agreement/verification", summary="Agreement verification (to the provider)"
)
async def negotiation_verification(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        m.parse(m.ContractAgreementVerificationMessage, body)
        view, follow_up = negotiations.receive_verification(runtime, peer, pid)
        return (*_negotiation_answer(view), follow_up)

    return await _handle(request, background, "negotiation", handler, pid)


@router.post("/dsp/negotiations/{pid}/termination", summary="Negotiation termination (either side)")
async def negotiation_termination(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        msg = m.parse(m.ContractNegotiationTerminationMessage, body)
        return (*_negotiation_answer(negotiations.receive_termination(runtime, peer, pid, msg)), None)

    return await _handle(request, background, "negotiation", handler, pid)


# --- Transfer process ----------------------------------------------------------------------------------


@router.get("/dsp/transfers/{pid}", summary="A transfer process's state")
async def get_transfer(request: Request, background: BackgroundTasks, pid: Pid) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, None]:
        return transfers.process_message(transfers.get_transfer(runtime, pid, peer.participant.id)), 200, None

    return await _handle(request, background, "transfer", handler, pid)


@router.post("/dsp/transfers/request", summary="Transfer request (to the provider)")
async def transfer_request(request: Request, background: BackgroundTasks) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        msg = m.parse(m.TransferRequestMessage, body)
        view, follow_up = transfers.receive_request(runtime, peer, msg)
        return transfers.process_message(view), 201, follow_up

    return await _handle(request, background, "transfer", handler)


_TRANSFER_MESSAGES: dict[str, type[transfers.StepMessage]] = {
    "start": m.TransferStartMessage,
    "completion": m.TransferCompletionMessage,
    "suspension": m.TransferSuspensionMessage,
    "termination": m.TransferTerminationMessage,
}


@router.post("/dsp/transfers/{pid}/{step}", summary="Transfer start, completion, suspension or termination")
async def transfer_step(request: Request, background: BackgroundTasks, pid: Pid, step: str) -> Response:
    def handler(runtime: Runtime, peer: PeerIdentity, body: Any) -> tuple[dict[str, Any], int, Any]:
        model = _TRANSFER_MESSAGES.get(step)
        if model is None:
            raise DspError(
                404, "unknown_step", [f"no transfer step {step!r}; one of {', '.join(_TRANSFER_MESSAGES)}"]
            )
        msg = m.parse(model, body)
        view, follow_up = transfers.receive(runtime, peer, pid, msg)
        return transfers.process_message(view), 200, follow_up

    return await _handle(request, background, "transfer", handler, pid)


# --- EncryptedDataset-PULL: the copy endpoints (token from the transfer start) ------------------------


def _copy_access(runtime: Runtime, request: Request, pid: str) -> access_tokens.AgreementAccess:
    from connector.identity.verifier import TokenVerifier

    principal = runtime.verifier.verify(
        TokenVerifier.bearer_from_header(request.headers.get("authorization"))
    )
    if not access_tokens.is_agreement_token(runtime, principal):
        raise ForbiddenError("the copy endpoints take only the token of their transfer")
    access = access_tokens.check(runtime, principal, "copy")
    if access.transfer_pid != pid:
        raise ForbiddenError("this token is for another transfer")
    return access


@router.get("/dsp/transfers/{pid}/copy", summary="The manifest of an encrypted copy (EncryptedDataset-PULL)")
async def copy_manifest(request: Request, pid: Pid) -> Response:
    runtime = runtime_of(request)

    def work() -> dict[str, Any]:
        access = _copy_access(runtime, request, pid)
        with runtime.sessions() as session:
            from connector.dataspace.models import Agreement

            agreement = session.get(Agreement, access.agreement_id)
            consumer = agreement.consumer if agreement else ""
        return transfers.copy_of(runtime, access, consumer)

    try:
        return JSONResponse(await run_in_threadpool(work), media_type=_JSON)
    except AuthError as exc:
        return _error("transfer", 401, exc.code, [exc.detail], pid, "")
    except ForbiddenError as exc:
        return _error("transfer", 403, "forbidden", [exc.detail], pid, "")
    except DspError as exc:
        return _error("transfer", exc.status, exc.code, exc.reasons, pid, "")


@router.get("/dsp/transfers/{pid}/copy/objects/{key:path}", summary="One encrypted object of a copy")
async def copy_object(request: Request, pid: Pid, key: str) -> Response:
    runtime = runtime_of(request)

    def work() -> bytes:
        from connector.dataspace.encrypted_copy import stored_object

        access = _copy_access(runtime, request, pid)
        return stored_object(
            runtime, access.dataset, key, studies=set(transfers.copy_studies(runtime, access.dataset))
        )

    try:
        return Response(await run_in_threadpool(work), media_type="application/octet-stream")
    except AuthError as exc:
        return _error("transfer", 401, exc.code, [exc.detail], pid, "")
    except ForbiddenError as exc:
        return _error("transfer", 403, "forbidden", [exc.detail], pid, "")
    except LookupError:
        return _error("transfer", 404, "unknown_object", ["no such object in this transfer"], pid, "")
