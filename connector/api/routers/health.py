"""Liveness and readiness probes for load balancers and orchestrators (public, no data)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from connector import __version__
from connector.api.errors import error_response
from connector.api.security import public, runtime_of
from connector.db.engine import check_database

router = APIRouter(tags=["health"])
log = logging.getLogger("connector.health")


@router.get("/healthz", dependencies=[Depends(public())], summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz", dependencies=[Depends(public())], summary="Database, object store and policy engine work"
)
async def readyz(request: Request) -> JSONResponse:
    runtime = runtime_of(request)
    checks: dict[str, str] = {}
    probes = {
        "database": lambda: check_database(runtime.engine),
        "object_store": runtime.objects.check,
        "policy_engine": lambda: runtime.policy.check(),
    }
    for name, probe in probes.items():
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:
            # Reasons go to the operator's log; the public answer says only which part failed.
            log.error("readiness check failed", extra={"check": name, "reason": str(exc)})
            checks[name] = "failed"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    failed = ", ".join(name for name, value in checks.items() if value != "ok")
    return error_response(
        503, "not_ready", f"not ready: {failed} failed (see the connector's log)", checks=checks
    )
