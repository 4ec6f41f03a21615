"""The FastAPI application factory: routers, error format, request context, role checks.

The app holds a Runtime built elsewhere; it never builds parts itself, so tests and the CLI
can hand it whatever the settings chose.
"""

from __future__ import annotations

from fastapi import FastAPI

from connector import __version__
from connector.api.errors import install_error_handlers
from connector.api.middleware import RequestContextMiddleware
from connector.api.routers import admin, audit, catalog, dsp, health, jobs, me, policy
from connector.api.security import assert_every_route_declares_roles
from connector.dataspace.messages import error_for_path
from connector.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="Imaging data-space connector",
        version=__version__,
        description=(
            "A hospital's connector: de-identified, encrypted imaging datasets, described in a "
            "HealthDCAT-AP catalog, used by outside AI teams through compute-to-data "
            "under the DPO's policies."
        ),
    )
    app.state.runtime = runtime
    for router in (
        health.router,
        me.router,
        admin.router,
        audit.router,
        policy.router,
        catalog.router,
        jobs.router,
        dsp.router,
    ):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=runtime.settings.api_max_body_bytes,
        large_body_paths={"/v1/jobs": runtime.settings.job_package_max_bytes + (1 << 20)},
        max_json_depth=runtime.settings.api_max_json_depth,
        error_bodies=[("/dsp/", error_for_path)],
    )
    assert_every_route_declares_roles(app.routes)
    return app
