"""Authentication and authorization: every credential resolves to one principal (a tenant's API key
with its scopes, or the operator key ``LODESTAR_ADMIN_KEY``); the one guard checks it against the
scope the handler declares (``opt={"scope": ...}``, ``read`` by default), and a tenant key's request
against its tenant's request-rate quotas (serving.quotas). The tenant comes from the key, never from
a path or body field; only operator routes name a tenant in their path.

The console's pages (``opt={"console": True}``) take no key: a signed-in session (an HttpOnly
cookie, server-side data) resolves to an operator or a member with a role per tenant
(:func:`console_principal`, read again on every request, so a role taken away is gone from the next
one), and :func:`require_console_role` checks the role the page declares (``opt={"role": ...}``) in
the tenant its path names."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from lodestar.accounts import role_at_least
from lodestar.cdp import READ
from lodestar.keys import ADVERTISER, MEMBER, OPERATOR, Principal, principal_for_key
from serving.loop import run_blocking
from serving.quotas import SLOT

PUBLIC = "public"
SCOPE = "scope"  # handler opt: the scope a tenant key needs (read, events, admin), or "operator"
CONSOLE = "console"  # handler opt: a console page (a session, not a key)
ROLE = "role"  # console handler opt: the least role needed in the path's tenant (viewer by default)
OPERATORS_ONLY = "operators_only"  # console handler opt: for operators only
ADVERTISER_PAGE = "advertiser_page"  # console handler opt: an advertiser's own page (True), or "either"
# Handler opt: the key may also come as HTTP Basic credentials with the key as user name and no
# password, as Segment's libraries send their write key (serving.ingest).
BASIC_KEY = "basic_key"


def fingerprint(secret: str) -> str:
    """What a session keeps of a secret it depends on (the operator key, a password hash): when the
    secret changes, the session no longer matches and ends."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def console_principal(connection: ASGIConnection) -> Principal | None:
    """Who the console session speaks for, or ``None`` (not signed in, or the account, its password
    or the operator key changed since)."""
    session = connection.scope.get("session") or {}
    state = connection.app.state
    if session.get("advertiser_key"):  # an advertiser signed in with its key: as long as the key stands
        found = state.cdp.find_api_key(session["advertiser_key"])
        if found is None or not found.advertiser or not hmac.compare_digest(session.get("key_hash", ""),
                                                                            fingerprint(found.key_hash)):
            return None
        return Principal(ADVERTISER, found.tenant, (), session["advertiser_key"], advertiser=found.advertiser)
    if session.get("operator_key"):
        key = state.operator_key
        return Principal(OPERATOR) if key and hmac.compare_digest(session["operator_key"], fingerprint(key)) else None
    email = session.get("account")
    if not email:
        return None
    account = state.cdp.get_account(email)
    if account is None or not hmac.compare_digest(session.get("password", ""), fingerprint(account["password_hash"])):
        return None
    if account["operator"]:
        return Principal(OPERATOR, account=email)
    return Principal(MEMBER, account=email, roles=tuple(state.cdp.account_roles(email).items()))


def require_console_role(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The console's guard: a signed-in principal with the page's role in the tenant its path names
    (``/console/t/{tenant}/...``); 401 (the sign-in page) without one, 403 without the role."""
    principal = console_principal(connection)
    connection.state.principal = principal
    if principal is None:
        if handler.opt.get(PUBLIC):
            return
        raise NotAuthorizedException("sign in to use the console")
    if handler.opt.get(OPERATORS_ONLY) and principal.kind != OPERATOR:
        raise PermissionDeniedException("only operators may open this page")
    page = handler.opt.get(ADVERTISER_PAGE)
    if page != "either" and (principal.kind == ADVERTISER) != bool(page) and not handler.opt.get(PUBLIC):
        raise PermissionDeniedException("an advertiser's sign-in opens its own pages (/console/ads) only"
                                        if principal.kind == ADVERTISER else "this page is for advertisers")
    tenant = connection.path_params.get("tenant")
    if tenant is None:
        return
    role, needed = principal.role_in(tenant), handler.opt.get(ROLE, "viewer")
    if role is None:
        raise PermissionDeniedException(f"you have no role in tenant {tenant!r}; ask one of its owners to add you")
    if not role_at_least(role, needed):
        raise PermissionDeniedException(f"this needs the {needed} role in tenant {tenant!r} (you are {role}); "
                                        "ask one of its owners")


def _principal(connection: ASGIConnection, basic: bool = False) -> Principal | None:
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if basic and scheme.lower() == "basic":
        key = _basic_user(key)
    elif scheme.lower() != "bearer":
        return None
    if not key.strip():
        return None
    state = connection.app.state
    return principal_for_key(state.cdp, key.strip(), state.operator_key)


def _basic_user(credentials: str) -> str:
    """The user name of HTTP Basic credentials (``base64(user:password)``), or "" when unreadable."""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[0]


async def require_principal(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """App-wide guard. Public routes (``opt={"public": True}``: health, readiness, schema) need no key;
    a valid one sent to them is still resolved (``/ready`` then reports that tenant). Console pages
    have a guard of their own (:func:`require_console_role`). The key is looked up in the CDP: on
    the event loop's thread when that and the rate counters are in this process, else in a worker
    thread (:mod:`serving.loop`)."""
    await run_blocking(connection.app.state.services.in_process, _require_principal, connection, handler)


def _require_principal(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get(CONSOLE):
        return
    if handler.opt.get(PUBLIC) or connection.scope["path"].startswith("/schema"):
        connection.state.principal = _principal(connection) if "authorization" in connection.headers else None
        return
    if "authorization" not in connection.headers:
        raise NotAuthorizedException("send your tenant's API key as 'Authorization: Bearer <key>'")
    principal = _principal(connection, basic=bool(handler.opt.get(BASIC_KEY)))
    state = connection.app.state
    if principal is None:
        if connection.headers["authorization"].lower().startswith("basic "):
            raise NotAuthorizedException("send the API key as 'Authorization: Bearer <key>' (HTTP Basic credentials "
                                         "are taken by /v1/ingest/segment/..., as Segment's libraries send them)"
                                         if not handler.opt.get(BASIC_KEY) else
                                         "the API key (the HTTP Basic user name) is not valid (unknown, revoked or "
                                         "mistyped); ask your tenant admin for a current key")
        raise NotAuthorizedException("the API key is not valid (unknown, revoked or mistyped); "
                                     "ask your tenant admin for a current key")
    needed = handler.opt.get(SCOPE, READ)
    if needed == ADVERTISER or principal.kind == ADVERTISER:
        if needed != ADVERTISER or principal.kind != ADVERTISER:
            raise PermissionDeniedException(
                "an advertiser's key works on /v1/ads/... only, and those routes take only an advertiser's key"
                if principal.kind == ADVERTISER else "this route is for an advertiser's key (see POST /v1/advertisers)")
    elif needed == OPERATOR:
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
    if principal.key_id is not None:
        state.key_usage.seen(principal.key_id)
    if principal.kind not in (OPERATOR, ADVERTISER):  # advertisers never use up the shop's own quotas
        # The tenant's configuration, read once here for the handler too (serving.dependencies),
        # holds its quotas: a request past one is refused before any work (429, Retry-After).
        config = state.configs.get(principal.tenant)
        connection.state.config = config
        held = state.rates.admit(principal, config.quotas, connection.headers.get("authorization"))
        if held is not None:
            connection.scope[SLOT] = held  # given back when the request is done (serving.limits)
