"""Authentication: the tenant comes from the API key, never from a path or body field."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from lodestar.keys import tenant_for_key

PUBLIC = "public"


def require_tenant_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """App-wide guard. Handlers opt out only with ``opt={"public": True}`` (health, readiness, schema)."""
    if handler.opt.get(PUBLIC) or connection.scope["path"].startswith("/schema"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException("send your tenant's API key as 'Authorization: Bearer <key>'")
    tenant = tenant_for_key(connection.app.state.cdp, key.strip())
    if tenant is None:
        raise NotAuthorizedException("the API key is not valid; ask your tenant admin for a current key")
    connection.state.tenant = tenant
