"""Signing in and out, the console's home, and the operators' list of tenants."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import anyio
from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from lodestar.accounts import SignInRefused, authenticate
from lodestar.cdp import ALL_SCOPES, OPERATOR_LOG, audit_entry
from lodestar.errors import Conflict, InvalidInput
from lodestar.keys import ADVERTISER, OPERATOR, create_key, principal_for_key
from serving.auth import ADVERTISER_PAGE, OPERATORS_ONLY, PUBLIC, fingerprint
from serving.console.web import (
    NEW_SESSION_ID,
    PREFIX,
    flash,
    form_of,
    off_loop,
    principal,
    redirect,
    render,
)
from serving.dependencies import (
    Cdp,
    IndexStoreDep,
    PipelineDep,
    SettingsDep,
    SignInGateDep,
)


def _next(raw: str | None) -> str:
    """Where to go after signing in: a console page only (never another site)."""
    return raw if raw and raw.startswith(f"{PREFIX}/") and not raw.startswith("//") and "\\" not in raw else f"{PREFIX}/"


class SignInController(Controller):
    path = PREFIX
    opt = {PUBLIC: True}

    @get("/signin", operation_id="consoleSignInPage", include_in_schema=False)
    async def page(self, request: Request, settings: SettingsDep, next: str | None = None) -> Template:
        return render(request, "signin.html", next=_next(next), operator_key=bool(settings.admin_key))

    @post("/signin", operation_id="consoleSignIn", include_in_schema=False, status_code=303)
    async def sign_in(self, request: Request, cdp: Cdp, settings: SettingsDep, signin_gate: SignInGateDep
                      ) -> Template | Redirect:
        form = await form_of(request)
        address = request.client.host if request.client else "?"
        target = _next(form.get("next"))
        if not signin_gate.admit(address):
            return render(request, "signin.html", status_code=429, next=target, email=form.get("email", ""),
                          operator_key=bool(settings.admin_key),
                          error="too many sign-in attempts from your address; wait a few minutes and try again")
        try:
            if form.get("advertiser_key"):
                found = await off_loop(principal_for_key, cdp, form["advertiser_key"].strip())
                if found is None or found.kind != ADVERTISER:
                    raise SignInRefused("that is not an advertiser's key (POST /v1/advertisers gives one)")
                stored = await off_loop(cdp.find_api_key, found.key_id)
                if stored is None:  # revoked in the meantime
                    raise SignInRefused("that is not an advertiser's key (POST /v1/advertisers gives one)")
                session = {"advertiser_key": found.key_id, "key_hash": fingerprint(stored.key_hash)}
                target = f"{PREFIX}/ads"
            elif form.get("operator_key"):
                key = settings.admin_key
                if not key or not hmac.compare_digest(form["operator_key"].encode(), key.encode()):
                    raise SignInRefused("that is not the operator key (LODESTAR_ADMIN_KEY)")
                session: dict[str, Any] = {"operator_key": fingerprint(key)}
            else:
                email, password = form.get("email", ""), form.get("password", "")
                account = await anyio.to_thread.run_sync(lambda: authenticate(cdp, email, password),
                                                         limiter=signin_gate.checks)
                session = {"account": account["email"], "password": fingerprint(account["password_hash"])}
        except SignInRefused as exc:
            return render(request, "signin.html", status_code=429 if exc.retry_after else 401, next=target,
                          email=form.get("email", ""), operator_key=bool(settings.admin_key), error=str(exc))
        request.scope[NEW_SESSION_ID] = secrets.token_hex(32)  # a new session id for a new sign-in (no fixation)
        request.set_session(session)
        return redirect(target)

    @post("/signout", operation_id="consoleSignOut", include_in_schema=False, status_code=303)
    async def sign_out(self, request: Request) -> Redirect:
        request.clear_session()
        return redirect(f"{PREFIX}/signin")


class HomeController(Controller):
    path = PREFIX

    @get(["/", ""], operation_id="consoleHome", include_in_schema=False, opt={ADVERTISER_PAGE: "either"})
    async def home(self, request: Request) -> Template | Redirect:
        who = principal(request)
        if who.kind == OPERATOR:
            return redirect(f"{PREFIX}/tenants")
        if who.kind == ADVERTISER:
            return redirect(f"{PREFIX}/ads")
        tenants = sorted(dict(who.roles))
        if len(tenants) == 1:
            return redirect(f"{PREFIX}/t/{tenants[0]}")
        return render(request, "home.html", tenants=dict(who.roles))


class TenantsController(Controller):
    """Every tenant with its index version, counts and last run; creating one (operators)."""

    path = f"{PREFIX}/tenants"
    opt = {OPERATORS_ONLY: True}

    @get("/", operation_id="consoleTenants", include_in_schema=False)
    async def tenants(self, request: Request, cdp: Cdp, index_store: IndexStoreDep, console_pipeline: PipelineDep,
                      settings: SettingsDep) -> Template:
        def rows() -> list[dict[str, Any]]:
            out = []
            for t in cdp.list_tenants():
                record = index_store.published_record(t["name"])
                out.append({"name": t["name"], "items": cdp.count(t["name"], "items"),
                            "users": cdp.count(t["name"], "users"),
                            "version": record["version"] if record else None,
                            "published_at": record.get("published_at") if record else None})
            return out

        tenants = await off_loop(rows)
        try:
            runs = await off_loop(console_pipeline.latest)
        except Exception as exc:  # noqa: BLE001 - the page still lists the tenants, and says why runs are missing
            runs, runs_error = {}, f"the pipeline's run history could not be read: {exc}"
        else:
            runs_error = ""
        log = await off_loop(cdp.read_audit, OPERATOR_LOG, 20)
        return render(request, "tenants.html", tenants=tenants, runs=runs, runs_error=runs_error, log=log,
                      dagster_ui=settings.dagster_ui_url)

    @post("/", operation_id="consoleCreateTenant", include_in_schema=False, status_code=303)
    async def create(self, request: Request, cdp: Cdp) -> Template | Redirect:
        form = await form_of(request)
        name = form.get("name", "").strip()
        actor = principal(request).actor

        def make() -> str:
            cdp.create_tenant(name)
            cdp.append_audit(OPERATOR_LOG, audit_entry(actor, "tenant.create", name))
            return create_key(cdp, name, ALL_SCOPES, "created in the console", actor)

        try:
            key = await off_loop(make)
        except (InvalidInput, Conflict) as exc:
            flash(request, str(exc), "error")
            return redirect(f"{PREFIX}/tenants")
        flash(request, f"Created tenant {name!r}. Its first API key (all scopes), shown once: {key}", "secret")
        return redirect(f"{PREFIX}/t/{name}")
