"""Authentication and authorization: every credential resolves to one principal (a tenant's API key
with its scopes, or the operator key ``LODESTAR_ADMIN_KEY``); the one guard checks it against the
scope the handler declares (``opt={"scope": ...}``, ``read`` by default), and a tenant key's request
against its tenant's request-rate quotas (serving.quotas). The tenant comes from the key, never from
a path or body field; only operator routes name a tenant in their path."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from lodestar.cdp import READ
from lodestar.keys import OPERATOR, Principal, principal_for_key
from serving.quotas import SLOT

PUBLIC = "public"
SCOPE = "scope"  # handler opt: the scope a tenant key needs (read, events, admin), or "operator"


def _principal(connection: ASGIConnection) -> Principal | None:
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    state = connection.app.state
    return principal_for_key(state.cdp, key.strip(), state.operator_key)


def require_principal(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """App-wide guard. Public routes (``opt={"public": True}``: health, readiness, schema) need no key;
    a valid one sent to them is still resolved (``/ready`` then reports that tenant)."""
    if handler.opt.get(PUBLIC) or connection.scope["path"].startswith("/schema"):
        connection.state.principal = _principal(connection) if "authorization" in connection.headers else None
        return
    if "authorization" not in connection.headers:
        raise NotAuthorizedException("send your tenant's API key as 'Authorization: Bearer <key>'")
    principal = _principal(connection)
    if principal is None:
        raise NotAuthorizedException("the API key is not valid (unknown, revoked or mistyped); "
                                     "ask your tenant admin for a current key")
    needed = handler.opt.get(SCOPE, READ)
    if needed == OPERATOR:
        if principal.kind != OPERATOR:
            raise PermissionDeniedException("this route is for the operator key (LODESTAR_ADMIN_KEY)")
    elif principal.kind == OPERATOR:
        raise PermissionDeniedException("the operator key acts on a tenant through /v1/operator/tenants/{tenant}/...; "
                                        "use one of the tenant's API keys here")
    elif not principal.may(needed):
        raise PermissionDeniedException(
            f"this API key lacks the {needed!r} scope (it has {', '.join(principal.scopes)}); use a key with it, "
            f"e.g. `lodestar tenants key {principal.tenant} --scope {needed}`")
    connection.state.principal = principal
    connection.state.tenant = principal.tenant
    if principal.kind != OPERATOR:
        # The tenant's configuration, read once here for the handler too (serving.dependencies),
        # holds its quotas: a request past one is refused before any work (429, Retry-After).
        state = connection.app.state
        config = state.configs.get(principal.tenant)
        connection.state.config = config
        held = state.rates.admit(principal, config.quotas, connection.headers.get("authorization"))
        if held is not None:
            connection.scope[SLOT] = held  # given back when the request is done (serving.limits)
