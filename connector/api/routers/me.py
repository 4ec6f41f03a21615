"""`/v1/me`: who the caller is, as the connector sees them, and which routes their roles open."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from connector.api.security import ALL_ROLES, access_table, requires
from connector.identity.principal import Principal

router = APIRouter(prefix="/v1", tags=["identity"])


class RouteAccess(BaseModel):
    method: str
    path: str


class Me(BaseModel):
    subject: str
    roles: list[str]
    issuer: str
    organisation: str | None
    country: str | None
    expires_at: datetime
    may_call: list[RouteAccess]


@router.get("/me", response_model=Me, summary="The authenticated caller and what they may call")
def me(request: Request, principal: Annotated[Principal, Depends(requires(*ALL_ROLES))]) -> Me:
    may_call = [
        RouteAccess(method=method, path=path)
        for method, path, roles in access_table(request.app.routes)
        if roles is None or roles & principal.roles
    ]
    return Me(
        subject=principal.subject,
        roles=sorted(principal.roles),
        issuer=principal.issuer,
        organisation=principal.organisation,
        country=principal.country,
        expires_at=principal.expires_at,
        may_call=may_call,
    )
