"""What every console page shares: rendering a template with the signed-in principal and the
tenant's navigation, one-time messages after a redirect, forms, and errors shown as pages."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
)
from litestar.response import Redirect, Template
from litestar.status_codes import HTTP_303_SEE_OTHER

from lodestar.accounts import role_at_least
from lodestar.errors import Conflict, Forbidden, IndexNotReady, InvalidInput, NotFound
from lodestar.keys import OPERATOR, Principal

T = TypeVar("T")
PREFIX = "/console"
NEW_SESSION_ID = "lodestar.new_session_id"  # scope key: the session id to store a fresh sign-in under

# The tenant pages, in the navigation's order: (path under /console/t/<tenant>, label, least role).
NAVIGATION = (
    ("", "Overview", "viewer"), ("/catalog", "Catalog", "viewer"), ("/users", "Users", "viewer"),
    ("/preview", "Preview", "viewer"), ("/config", "Configuration", "viewer"), ("/experiments", "Experiments", "viewer"),
    ("/pipeline", "Pipeline", "viewer"), ("/ads", "Retail media", "viewer"), ("/alerts", "Alerts", "viewer"),
    ("/keys", "API keys", "owner"), ("/members", "Members", "owner"), ("/audit", "Audit log", "viewer"),
)


def display_money(micros: int) -> str:
    """Micros as currency for people: two decimals, thousands separated (the API keeps every micro)."""
    return f"{micros / 1e6:,.2f}"


def utc(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp)) if stamp else "—"


def age(stamp: float | None) -> str:
    if not stamp:
        return "—"
    seconds = max(0, time.time() - stamp)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def flash(request: Request, message: str, kind: str = "ok") -> None:
    """A message shown once, on the next page (after a redirect)."""
    request.session.setdefault("flash", []).append([kind, message])


def redirect(path: str) -> Redirect:
    return Redirect(path=path, status_code=HTTP_303_SEE_OTHER)


def principal(request: Request) -> Principal:
    return request.state.principal


def render(request: Request, template: str, status_code: int = 200, tenant: str | None = None, **context: Any
           ) -> Template:
    """The page ``template`` for the signed-in principal; with ``tenant``, the tenant's navigation
    shows the pages the principal's role there opens."""
    who: Principal | None = getattr(request.state, "principal", None)
    messages = request.session.pop("flash", []) if request.scope.get("session") else []
    role = who.role_in(tenant) if who is not None and tenant else None
    nav = [(f"{PREFIX}/t/{tenant}{path}", label) for path, label, needed in NAVIGATION
           if role is not None and role_at_least(role, needed)] if tenant else []
    own = sorted(dict(who.roles)) if who is not None and who.kind != OPERATOR else []
    # Pages hold tenant data and, once, new secrets: never kept by a browser or a proxy cache.
    return Template(template_name=template, status_code=status_code, headers={"Cache-Control": "no-store"}, context={
        "who": who, "is_operator": who is not None and who.kind == OPERATOR, "tenant": tenant, "role": role,
        "nav": nav, "path": request.url.path, "messages": messages, "own_tenants": own, "utc": utc, "age": age,
        "money": display_money,
        "can": (lambda needed: role_at_least(role, needed)), **context})


async def form_of(request: Request) -> dict[str, str]:
    """The submitted form, one value per field (the last one)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Blocking work (the CDP store, ranking) on a worker thread."""
    return await anyio.to_thread.run_sync(lambda: function(*args))


def _page(request: Request, status: int, title: str, detail: str) -> Template:
    if request.scope.get("session") is None:
        request.scope["session"] = {}
    return render(request, "error.html", status_code=status, title=title, detail=detail)


def _sign_in_first(request: Request, exc: NotAuthorizedException) -> Response:  # type: ignore[type-arg]
    if request.method == "GET":
        query = request.scope.get("query_string", b"").decode("latin-1")
        return redirect(f"{PREFIX}/signin?next={quote(request.url.path + ('?' + query if query else ''), safe='')}")
    return _page(request, 401, "Signed out", "your session has ended; sign in again and repeat the change")


def _forbidden(request: Request, exc: Exception) -> Response:
    detail = str(getattr(exc, "detail", "") or exc)
    if "CSRF" in detail:
        detail = ("the form was not accepted: it carried no valid CSRF token (it is stale, or was sent from another "
                  "site). Reload the page and try again.")
    return _page(request, 403, "Not allowed", detail)


def _http(request: Request, exc: HTTPException) -> Response:
    return _page(request, exc.status_code, "Something went wrong", str(exc.detail))


EXCEPTION_HANDLERS: dict[type[Exception] | int, Callable[..., Response]] = {
    NotAuthorizedException: _sign_in_first,
    PermissionDeniedException: _forbidden,
    Forbidden: _forbidden,
    NotFound: lambda request, exc: _page(request, 404, "Not found", str(exc)),
    IndexNotReady: lambda request, exc: _page(request, 503, "No published index yet", str(exc)),
    Conflict: lambda request, exc: _page(request, 409, "Conflict", str(exc)),
    InvalidInput: lambda request, exc: _page(request, 422, "Not valid", str(exc)),
    HTTPException: _http,
}
