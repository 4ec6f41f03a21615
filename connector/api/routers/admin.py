"""Operational views for the hospital's own staff: the effective (masked) configuration."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from connector.api.security import requires, runtime_of
from connector.identity.principal import Principal
from connector.identity.roles import Role

router = APIRouter(prefix="/v1", tags=["administration"])


@router.get("/config", summary="Effective settings, secrets masked (steward, DPO)")
def config(
    request: Request, _: Annotated[Principal, Depends(requires(Role.STEWARD, Role.DPO))]
) -> dict[str, Any]:
    return runtime_of(request).settings.masked()
