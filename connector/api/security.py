"""Who may call what: every route declares its roles with `requires(...)` or is marked `public()`.

The app factory refuses to start if any route declares neither, so no route is open by accident.
Denials by role are written to the audit trail; token failures are logged (never the token).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from connector.identity.errors import AuthError, ForbiddenError
from connector.identity.principal import Principal
from connector.identity.roles import Role
from connector.identity.verifier import TokenVerifier, require_roles
from connector.runtime import Runtime

log = logging.getLogger("connector.auth")

_bearer = HTTPBearer(
    auto_error=False, description="A JWT from a trusted issuer (the hospital's OIDC, an HDAB, a peer)."
)

ALL_ROLES: tuple[Role, ...] = tuple(Role)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def requires(*roles: Role) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and admits only `roles`."""
    allowed = frozenset(roles)

    def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        runtime = runtime_of(request)
        header = request.headers.get("authorization")
        try:
            principal = runtime.verifier.verify(TokenVerifier.bearer_from_header(header))
        except AuthError as exc:
            log.warning("authentication failed", extra={"reason": exc.code, "path": request.url.path})
            raise
        request.scope.setdefault("state", {})["subject"] = principal.subject
        from connector.dataspace import access_tokens

        if access_tokens.is_agreement_token(runtime, principal):
            # Our own key signs only the job tokens of started DSP transfers: such a token is good
            # for the jobs routes while its transfer is live, and for nothing else.
            if not request.url.path.startswith("/v1/jobs"):
                raise ForbiddenError("a contract-agreement token is good for the jobs routes only")
            access_tokens.check(runtime, principal, "jobs")
        try:
            require_roles(principal, allowed)
        except ForbiddenError as exc:
            runtime.audit.record(
                actor=principal.subject,
                action="auth.denied",
                object=f"{request.method} {request.url.path}",
                outcome="deny",
                reasons=[exc.detail],
                roles=principal.roles,
            )
            raise
        # The DPO's API role policy (Rego) has the last word; it may narrow what the code admits.
        route = request.scope.get("route")
        decision = runtime.policy.authorize(
            request.method, getattr(route, "path", request.url.path), principal.roles, principal.subject
        )
        if not decision.allow:
            raise ForbiddenError("; ".join(decision.reasons))
        return principal

    # mypy knows no attributes on functions; route_roles reads this marker back.
    dependency.allowed_roles = allowed  # type: ignore[attr-defined]
    return dependency


def public() -> Callable[[], None]:
    """Marks a route as open to anyone (health probes, the public catalog)."""

    def dependency() -> None:
        return None

    dependency.allowed_roles = None  # type: ignore[attr-defined]  # a marker, as in requires()
    return dependency


def route_roles(route: APIRoute) -> frozenset[Role] | None | Literal[False]:
    """The roles a route admits, None when public, False when it declares nothing (a bug)."""
    for dependency in route.dependant.dependencies:
        marker: Any = getattr(dependency.call, "allowed_roles", False)
        if marker is not False:
            return marker
    return False


def access_table(routes: list[Any]) -> list[tuple[str, str, frozenset[Role] | None]]:
    """(method, path, roles) for every API route, for `/v1/me` and the demo."""
    table = []
    for route in routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            roles = route_roles(route)
            for method in sorted(route.methods):
                table.append((method, route.path, None if roles is False else roles))
    return table


def assert_every_route_declares_roles(routes: list[Any]) -> None:
    undeclared = [
        route.path for route in routes if isinstance(route, APIRoute) and route_roles(route) is False
    ]
    if undeclared:
        raise RuntimeError(f"routes without requires(...) or public(): {', '.join(undeclared)}")
