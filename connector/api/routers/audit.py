"""The DPO's view of the audit trail: query, export as JSON lines, verify, checkpoint.

`verify` answers 200 with `ok: false` and machine-readable problem codes when the trail was tampered
with: the report is the result, not an error of the request. `POST /v1/audit/witness` keeps the signed
heads of trusted peers (their signature, checked against the trust list, is the authentication).

Reading the trail is itself audited, so the DPO's own look is on the record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from connector.api.errors import ApiError
from connector.api.security import public, requires, runtime_of
from connector.audit.heads import SignedHead
from connector.audit.witnessing import WitnessRefused, witness_head
from connector.identity.principal import Principal
from connector.identity.roles import Role

router = APIRouter(prefix="/v1/audit", tags=["audit"])
DpoOnly = Annotated[Principal, Depends(requires(Role.DPO))]


class AuditFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(default=None, max_length=256)
    action: str | None = Field(
        default=None, max_length=128, description="Exact action, or a prefix ending in '*'."
    )
    since: datetime | None = None
    until: datetime | None = None
    after_seq: int = Field(default=0, ge=0)


class AuditQuery(AuditFilter):
    limit: int = Field(default=100, ge=1, le=1000)


class AuditPage(BaseModel):
    entries: list[dict[str, Any]]
    next_after_seq: int | None


class ProblemOut(BaseModel):
    code: str = Field(
        description="entry_missing, entry_modified, entry_out_of_order, head_missing, tail_deleted, "
        "checkpoint_signature_invalid, checkpoint_beyond_chain, checkpoint_mismatch, checkpoint_missing, "
        "heads_file_corrupt, file_head_signature_invalid, file_head_mismatch, database_behind_file"
    )
    seq: int
    message: str


class VerificationOut(BaseModel):
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    heads_checked: int = Field(description="Signed heads in the outside heads file that match the database.")
    last_seq: int
    first_bad_seq: int | None
    code: str | None = Field(description="Machine-readable code of the first problem (see `problems`).")
    problem: str | None
    problems: list[ProblemOut]
    warnings: list[str]


class WitnessedHeadIn(BaseModel):
    """A peer's signed audit head, as its `audit_witness_url` push sends it."""

    model_config = ConfigDict(extra="forbid")

    connector_id: str = Field(min_length=1, max_length=256)
    seq: int = Field(ge=1)
    entry_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_at: str = Field(min_length=1, max_length=32)
    key_id: str = Field(min_length=1, max_length=64)
    signature: str = Field(min_length=1, max_length=128)


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.get("", response_model=AuditPage, summary="Query the audit trail (DPO)")
def query(
    request: Request,
    principal: DpoOnly,
    filters: Annotated[AuditQuery, Query()],
) -> AuditPage:
    limit = filters.limit
    runtime = runtime_of(request)
    runtime.audit.record(principal.subject, "audit.query", "audit", "success", roles=principal.roles)
    records = runtime.audit.query(
        filters.actor, filters.action, _ts(filters.since), _ts(filters.until), filters.after_seq, limit
    )
    entries = [record.as_json() for record in records]
    return AuditPage(entries=entries, next_after_seq=records[-1].seq if len(records) == limit else None)


@router.post("/export", summary="Export matching entries as JSON lines (DPO)")
def export(request: Request, principal: DpoOnly, filters: AuditFilter) -> StreamingResponse:
    runtime = runtime_of(request)
    runtime.audit.record(
        principal.subject,
        "audit.export",
        "audit",
        "success",
        details=filters.model_dump(mode="json"),
        roles=principal.roles,
    )

    def lines() -> Iterator[bytes]:
        for record in runtime.audit.iter_entries(
            filters.actor, filters.action, _ts(filters.since), _ts(filters.until), filters.after_seq
        ):
            yield (json.dumps(record.as_json(), ensure_ascii=False) + "\n").encode()

    return StreamingResponse(
        lines(),
        media_type="application/x-ndjson",
        headers={"content-disposition": 'attachment; filename="audit.jsonl"'},
    )


@router.get(
    "/verify", response_model=VerificationOut, summary="Verify the hash chain and signed checkpoints (DPO)"
)
def verify(request: Request, principal: DpoOnly) -> VerificationOut:
    runtime = runtime_of(request)
    result = runtime.audit.verify()
    runtime.audit.record(
        principal.subject,
        "audit.verify",
        "audit",
        "success" if result.ok else "failure",
        reasons=[result.problem] if result.problem else [],
        roles=principal.roles,
    )
    return VerificationOut(
        ok=result.ok,
        entries_checked=result.entries_checked,
        checkpoints_checked=result.checkpoints_checked,
        heads_checked=result.heads_checked,
        last_seq=result.last_seq,
        first_bad_seq=result.first_bad_seq,
        code=result.code,
        problem=result.problem,
        problems=[ProblemOut(code=p.code, seq=p.seq, message=p.message) for p in result.problems],
        warnings=list(result.warnings),
    )


@router.post("/checkpoint", summary="Sign the current head of the chain now (DPO)")
def checkpoint(request: Request, principal: DpoOnly) -> dict[str, Any]:
    runtime = runtime_of(request)
    signed = runtime.audit.checkpoint()
    return {"seq": signed[0], "entry_hash": signed[1]} if signed else {"seq": 0, "entry_hash": None}


@router.post(
    "/witness",
    dependencies=[Depends(public())],
    summary="Keep a trusted peer's signed audit head (the peer's signature is its authentication)",
)
def witness(request: Request, body: WitnessedHeadIn) -> dict[str, Any]:
    runtime = runtime_of(request)
    head = SignedHead(body.seq, body.entry_hash, body.signed_at, body.key_id, body.signature)
    actor = f"peer:{body.connector_id}"
    try:
        new = witness_head(
            runtime.trust, runtime.settings.data_dir / "audit" / "witnessed", body.connector_id, head
        )
    except WitnessRefused as exc:
        if exc.code == "head_forked":  # signed by the peer, so on the record (unsigned junk is not)
            runtime.audit.record(actor, "audit.witness", body.connector_id, "failure", reasons=[exc.detail])
        raise ApiError(exc.status, exc.code, exc.detail) from None
    if new:
        runtime.audit.record(actor, "audit.witness", body.connector_id, "success", details={"seq": body.seq})
    return {"connector_id": body.connector_id, "seq": body.seq, "stored": new}
