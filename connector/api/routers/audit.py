"""The DPO's view of the audit trail: query, export as JSON lines, verify, checkpoint.

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

from connector.api.security import requires, runtime_of
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


class VerificationOut(BaseModel):
    ok: bool
    entries_checked: int
    checkpoints_checked: int
    last_seq: int
    first_bad_seq: int | None
    problem: str | None


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
    return VerificationOut(**result.__dict__)


@router.post("/checkpoint", summary="Sign the current head of the chain now (DPO)")
def checkpoint(request: Request, principal: DpoOnly) -> dict[str, Any]:
    runtime = runtime_of(request)
    signed = runtime.audit.checkpoint()
    return {"seq": signed[0], "entry_hash": signed[1]} if signed else {"seq": 0, "entry_hash": None}
