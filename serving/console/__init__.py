"""The console: a browser admin for operators and tenant members, served under ``/console`` by the
same process as the API.

Server-rendered Jinja templates, plain HTML forms and inline SVG charts, with no script at all: every
page works with the keyboard and a screen reader as HTML does, nothing is loaded from elsewhere, and
there is no front-end build to keep. Pages that follow a run refresh themselves (``<meta refresh>``).

Sessions and CSRF come from Litestar: server-side sessions (an HttpOnly, SameSite=Lax cookie holding
a random id; the data in a file store under the data dir, shared by ``serve --workers``) and its
double-submit CSRF middleware (a token in every form; a state-changing request without it is a 403).
Both apply to ``/console`` only: the API authenticates with bearer keys, which browsers never send
on their own, so it needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from litestar import Router
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.contrib.jinja import JinjaTemplateEngine
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.static_files import create_static_files_router
from litestar.stores.file import FileStore
from litestar.template.config import TemplateConfig
from litestar.types import Empty

from lodestar.settings import Settings
from serving.auth import CONSOLE, require_console_role
from serving.console.admin import (
    AuditController,
    ConfigController,
    ExperimentsController,
    KeysController,
    MembersController,
    PipelineController,
)
from serving.console.advertiser import AdvertiserConsoleController
from serving.console.signin import HomeController, SignInController, TenantsController
from serving.console.tenant import (
    AdsController,
    AlertsController,
    CatalogController,
    OverviewController,
    PreviewController,
)
from serving.console.web import EXCEPTION_HANDLERS, NEW_SESSION_ID, PREFIX

HERE = Path(__file__).resolve().parent
SESSION_STORE = "console_sessions"
SESSION_HOURS = 12


class _RotatingBackend(ServerSideSessionBackend):
    """Litestar's server-side sessions, with a new session id at sign-in: an id planted before it (a
    cookie set by a sibling site, say) never becomes a signed-in session."""

    def get_session_id(self, connection: ASGIConnection) -> str:
        return connection.scope.get(NEW_SESSION_ID) or super().get_session_id(connection)

    async def store_in_message(self, scope_session: Any, message: Any, connection: ASGIConnection) -> None:
        old = connection.cookies.get(self.config.key)
        old = None if old in (None, "", "null") else old
        if not scope_session or scope_session is Empty:
            if old is None:
                return  # nothing to keep: an anonymous visit stores no session (and no file)
            scope_session = Empty
        elif connection.scope.get(NEW_SESSION_ID) and old:
            await self.delete(old, store=self.config.get_store_from_app(connection.scope["app"]))
        await super().store_in_message(scope_session, message, connection)


@dataclass
class _SessionConfig(ServerSideSessionConfig):
    _backend_class = _RotatingBackend


def _secret(settings: Settings) -> str:
    """The CSRF signing secret: ``LODESTAR_CONSOLE_SECRET``, else one made once per data dir."""
    return settings.secret("console", "LODESTAR_CONSOLE_SECRET")


def _private_dir(path: Path) -> Path:
    """A directory only this user may read (sessions hold who is signed in, and a secret shown once
    until the next page)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


async def sweep_sessions(store: Any, every_s: float = 3600.0) -> None:
    """Delete expired sessions now and every hour (the store deletes one only when it is read)."""
    while True:
        await store.delete_expired()
        await anyio.sleep(every_s)


def console_app_config(settings: Settings) -> dict[str, Any]:
    """What the app needs for the console: its routes (one router, with the session and CSRF
    middleware and its own guard and error pages), templates and the session store."""
    sessions = _SessionConfig(store=SESSION_STORE, key="lodestar_console", path=PREFIX, httponly=True,
                                       samesite="lax", secure=settings.console_secure_cookies,
                                       max_age=SESSION_HOURS * 3600)
    csrf = CSRFConfig(secret=_secret(settings), cookie_name="lodestar_csrf", cookie_path=PREFIX, cookie_samesite="lax",
                      cookie_secure=settings.console_secure_cookies)
    router = Router(
        path="/",
        route_handlers=[SignInController, HomeController, TenantsController, OverviewController, CatalogController,
                        PreviewController, ConfigController, ExperimentsController, KeysController, MembersController, AuditController,
                        PipelineController, AdsController, AlertsController, AdvertiserConsoleController],
        guards=[require_console_role],
        middleware=[sessions.middleware, DefineMiddleware(CSRFMiddleware, config=csrf)],
        exception_handlers=EXCEPTION_HANDLERS,
        opt={CONSOLE: True},
        include_in_schema=False,
    )
    static = create_static_files_router(path=f"{PREFIX}/static", directories=[HERE / "static"], opt={CONSOLE: True},
                                        include_in_schema=False, name="console_static")
    return {
        "route_handlers": [router, static],
        "template_config": TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        "stores": {SESSION_STORE: FileStore(_private_dir(settings.data_dir / "console" / "sessions"))},
    }
