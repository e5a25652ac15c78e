"""A tenant's changing pages: configuration and rules (preview, save, restore), API keys, members,
the audit log and the pipeline. Every change goes through the ``lodestar`` function the API and the
CLI use, audited with the signed-in account as its author."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from lodestar.accounts import add_member, ensure_account, remove_member
from lodestar.cdp import ALL_SCOPES, CdpStore, audit_entry, require_tenant
from lodestar.config_versions import (
    CONFIG_ACTIONS,
    proposed_config,
    restore_version,
    store_config,
)
from lodestar.errors import Conflict, Forbidden, InvalidInput
from lodestar.experiments import lifecycle as experiments_lifecycle
from lodestar.keys import create_key, parse_scopes, revoke_key
from lodestar.preview import active_users, preview_change, sample_users
from lodestar.records import EVENT_TYPES, check_text
from lodestar.tenant_config import DEFAULTS, RankingSettings, effective_config
from serving.auth import ROLE
from serving.console.web import (
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
    Config,
    EmbedderDep,
    Indexes,
    PipelineDep,
    SettingsDep,
)

RANKING_FIELDS = tuple(f.name for f in dataclasses.fields(RankingSettings))
RULE_FIELDS = ("type", "filter", "amount", "item_id", "position", "start", "end")
PREVIEW_SAMPLE = 200


def _number(text: str, field: str, integer: bool = False) -> float | int:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise InvalidInput(f"{field}: must be {'a whole number' if integer else 'a number'}, got {text!r}",
                           field=field) from None
    if not math.isfinite(value):
        raise InvalidInput(f"{field}: must be a finite number", field=field)
    return value


def form_rows(config: dict[str, Any]) -> list[dict[str, str]]:
    """The stored rules as the form's rows (text fields), and one blank row to add a rule."""
    rows = []
    for rule in config.get("rules") or []:
        row = {f: "" if rule.get(f) is None else str(rule[f]) for f in RULE_FIELDS}
        row["filter"] = json.dumps(rule["filter"]) if rule.get("filter") is not None else ""
        rows.append(row)
    return [*rows, dict.fromkeys(RULE_FIELDS, "")]


def config_from_form(stored: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    """The configuration the form describes: the stored one with the event weights, ranking weights
    and rules of the form (a value equal to the default is left out, so that it follows the default).
    Errors name the form's field (``rules.2.amount``)."""
    # Quotas are the operator's: never part of a tenant's change (proposed_config keeps them as stored).
    out = {k: v for k, v in stored.items() if k not in ("event_weights", "ranking", "rules", "quotas")}
    weights = {}
    for etype in EVENT_TYPES:
        name = f"event_weights.{etype}"
        value = _number(form.get(name, "").strip() or str(DEFAULTS["event_weights"][etype]), name)
        if value != DEFAULTS["event_weights"][etype]:
            weights[etype] = value
    ranking = {}
    for field in RANKING_FIELDS:
        name = f"ranking.{field}"
        value = _number(form.get(name, "").strip() or str(DEFAULTS["ranking"][field]), name)
        if value != DEFAULTS["ranking"][field]:
            ranking[field] = value
    rules = []
    for n in _row_numbers(form):
        get = lambda f: form.get(f"rules.{n}.{f}", "").strip()  # noqa: E731
        if not get("type") or get("remove"):
            continue
        rule: dict[str, Any] = {"type": get("type")}
        if get("filter"):
            try:
                rule["filter"] = json.loads(get("filter"))
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"rules.{n}.filter: not valid JSON ({exc.msg})", field=f"rules.{n}.filter") from None
        for field, integer in (("amount", False), ("position", True)):
            if get(field):
                rule[field] = _number(get(field), f"rules.{n}.{field}", integer)
        for field in ("item_id", "start", "end"):
            if get(field):
                rule[field] = get(field)
        rules.append((n, rule))
    if weights:
        out["event_weights"] = weights
    if ranking:
        out["ranking"] = ranking
    if rules:
        out["rules"] = [r for _, r in rules]
    out["_rows"] = [n for n, _ in rules]  # which form row each rule came from (for errors)
    return out


def _field_of(exc: InvalidInput, rows: list[int]) -> str:
    """The form field an error names: ``rules[1].amount`` of the validated list is the form row it
    came from (``rules.3.amount``); an error inside a rule's filter (``rules[1].filter.price.gte``)
    belongs to that rule's filter field."""
    field = exc.field or ""
    if field.startswith("rules["):
        index, _, rest = field[len("rules["):].partition("]")
        if index.isdigit() and int(index) < len(rows):
            return ".".join(f"rules.{rows[int(index)]}{rest}".split(".")[:3])
    return field


class ConfigController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}/config"

    def _page(self, request: Request, cdp: CdpStore, tenant: str, record: dict[str, Any],
              form: dict[str, str] | None = None,
              errors: dict[str, str] | None = None, preview: dict[str, Any] | None = None,
              proposed: dict[str, Any] | None = None, status_code: int = 200) -> Template:
        effective = effective_config(record["config"]).as_dict()
        values = form or {**{f"event_weights.{t}": str(effective["event_weights"][t]) for t in EVENT_TYPES},
                          **{f"ranking.{f}": str(effective["ranking"][f]) for f in RANKING_FIELDS}}
        rows = _rows_of(form) if form else form_rows(record["config"] or {})
        fields = {*values, *(f"rules.{n}.{f}" for n in range(len(rows)) for f in RULE_FIELDS)}
        errors = {name if name in fields else "_": message for name, message in (errors or {}).items()}
        history = cdp.read_audit(tenant, 30, action_prefix=CONFIG_ACTIONS)
        if proposed is not None:
            proposed = {k: v for k, v in proposed.items() if k != "quotas"}
        return render(request, "config.html", status_code=status_code, tenant=tenant, values=values, rows=rows,
                      errors=errors, preview=preview, proposed=proposed, based_on=record["updated_at"],
                      event_types=EVENT_TYPES, ranking_fields=RANKING_FIELDS, history=history,
                      stored=json.dumps(record["config"] or {}, indent=2), json=json)

    @get("/", operation_id="consoleConfig", include_in_schema=False)
    async def show(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        record = await off_loop(require_tenant, cdp, tenant)
        return await off_loop(self._page, request, cdp, tenant, record)

    @post("/preview", operation_id="consoleConfigPreview", include_in_schema=False, opt={ROLE: "editor"},
          status_code=200)
    async def preview(self, request: Request, tenant: str, cdp: Cdp, indexes: Indexes, embedder: EmbedderDep,
                      config: Config, settings: SettingsDep) -> Template:
        form = await form_of(request)

        def run() -> Template:
            record = require_tenant(cdp, tenant)
            rows: list[int] = []
            try:
                described = config_from_form(record["config"] or {}, form)
                rows = described.pop("_rows")
                proposed = proposed_config(record, described, replace=True)
            except (InvalidInput, Forbidden) as exc:
                field = _field_of(exc, rows) if isinstance(exc, InvalidInput) else ""
                return self._page(request, cdp, tenant, record, form, {field or "_": str(exc)}, status_code=422)
            users = sample_users(active_users(settings, tenant), PREVIEW_SAMPLE)
            if not users:
                return self._page(request, cdp, tenant, record, form, {"_": "the tenant has no users with events to "
                                                                       "preview on yet; materialize it first"}, status_code=422)
            chosen = form.get("preview_user", "").strip() or users[0]
            result = preview_change(indexes.get(tenant), cdp, embedder, tenant, config, effective_config(proposed),
                                    users, 10, chosen)
            return self._page(request, cdp, tenant, record, form, preview=result.as_dict(), proposed=proposed)

        return await off_loop(run)

    @post("/", operation_id="consoleConfigSave", include_in_schema=False, opt={ROLE: "editor"}, status_code=303)
    async def save(self, request: Request, tenant: str, cdp: Cdp) -> Redirect:
        form = await form_of(request)

        def store() -> None:
            record = require_tenant(cdp, tenant)
            if form.get("based_on") != repr(record["updated_at"]):
                raise Conflict("the configuration changed since this preview (someone saved, or the operator set "
                               "quotas); preview your change again")
            try:
                change = json.loads(form.get("config", ""))
            except json.JSONDecodeError:
                raise InvalidInput("the previewed configuration did not come back intact; preview again") from None
            store_config(cdp, record, proposed_config(record, change, replace=True), principal(request).actor)

        try:
            await off_loop(store)
        except (Conflict, InvalidInput, Forbidden) as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, "Saved: a new configuration version. Ranking weights and rules apply from the next request; "
                           "model settings at the next materialization.")
        return redirect(f"{PREFIX}/t/{tenant}/config")

    @post("/restore/{version_id:str}", operation_id="consoleConfigRestore", include_in_schema=False,
          opt={ROLE: "editor"}, status_code=303)
    async def restore(self, request: Request, tenant: str, version_id: str, cdp: Cdp) -> Redirect:
        form = await form_of(request)
        undo = form.get("undo") == "1"

        def restore() -> None:
            record = require_tenant(cdp, tenant)
            if form.get("based_on") != repr(record["updated_at"]):
                raise Conflict("the configuration changed since this page was shown; look at its versions again "
                               "and choose once more")
            restore_version(cdp, record, version_id, principal(request).actor, "the configuration page's history",
                            before=undo)

        try:
            await off_loop(restore)
        except Conflict as exc:
            flash(request, str(exc), "error")
        else:
            what = f"the configuration before version {version_id}" if undo else f"configuration version {version_id}"
            flash(request, f"Restored {what} (recorded as a new version).")
        return redirect(f"{PREFIX}/t/{tenant}/config")


def _row_numbers(form: dict[str, str]) -> list[int]:
    """The rule rows a submitted form holds (``rules.<n>.<field>``), in order."""
    return sorted({int(k.split(".")[1]) for k in form if k.startswith("rules.") and k.split(".")[1].isdigit()})


def _rows_of(form: dict[str, str]) -> list[dict[str, str]]:
    """The rule rows of a submitted form as the form shows them again (with a blank row to add one)."""
    rows = [{f: form.get(f"rules.{n}.{f}", "") for f in (*RULE_FIELDS, "remove")} for n in _row_numbers(form)]
    if not rows or rows[-1]["type"]:
        rows.append(dict.fromkeys(RULE_FIELDS, ""))
    return rows


class KeysController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}/keys"
    opt = {ROLE: "owner"}

    @get("/", operation_id="consoleKeys", include_in_schema=False)
    async def keys(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        keys = await off_loop(cdp.list_api_keys, tenant)
        return render(request, "keys.html", tenant=tenant, keys=keys, scopes=ALL_SCOPES)

    @post("/", operation_id="consoleCreateKey", include_in_schema=False, status_code=303)
    async def create(self, request: Request, tenant: str, cdp: Cdp) -> Redirect:
        form = await request.form()
        try:
            scopes = parse_scopes(form.getall("scopes", []))
            label = check_text(str(form.get("label", "")).strip(), "label")
            key = await off_loop(create_key, cdp, tenant, scopes, label, principal(request).actor)
        except InvalidInput as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, f"New API key {label!r} with scopes {', '.join(scopes)}. Copy it now: it is shown once. {key}",
                  "secret")
        return redirect(f"{PREFIX}/t/{tenant}/keys")

    @post("/{key_id:str}/revoke", operation_id="consoleRevokeKey", include_in_schema=False, status_code=303)
    async def revoke(self, request: Request, tenant: str, key_id: str, cdp: Cdp) -> Redirect:
        await off_loop(revoke_key, cdp, tenant, key_id, principal(request).actor, "this page")
        flash(request, f"Revoked key {key_id}: every server refuses it from the next request on.")
        return redirect(f"{PREFIX}/t/{tenant}/keys")


class MembersController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}/members"
    opt = {ROLE: "owner"}

    @get("/", operation_id="consoleMembers", include_in_schema=False)
    async def members(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        members = await off_loop(cdp.list_members, tenant)
        return render(request, "members.html", tenant=tenant, members=members)

    @post("/", operation_id="consoleAddMember", include_in_schema=False, status_code=303)
    async def add(self, request: Request, tenant: str, cdp: Cdp) -> Redirect:
        form = await form_of(request)
        actor = principal(request).actor

        def run() -> Any:
            made = ensure_account(cdp, form.get("email", ""), None, actor)
            add_member(cdp, tenant, made.email, form.get("role", ""), actor)
            return made

        try:
            made = await off_loop(run)
        except InvalidInput as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, f"{made.email} is now {form.get('role')} of {tenant}.")
            if made.password:
                flash(request, f"New account {made.email}: its password, shown once (send it safely): {made.password}",
                      "secret")
        return redirect(f"{PREFIX}/t/{tenant}/members")

    @post("/remove", operation_id="consoleRemoveMember", include_in_schema=False, status_code=303)
    async def remove(self, request: Request, tenant: str, cdp: Cdp) -> Redirect:
        form = await form_of(request)
        await off_loop(remove_member, cdp, tenant, form.get("email", ""), principal(request).actor)
        flash(request, f"{form.get('email')} is no longer a member of {tenant}.")
        return redirect(f"{PREFIX}/t/{tenant}/members")


class AuditController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}/audit"

    @get("/", operation_id="consoleAudit", include_in_schema=False)
    async def audit(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        entries = await off_loop(cdp.read_audit, tenant, 200)
        return render(request, "audit.html", tenant=tenant, entries=entries, json=json)


class PipelineController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}/pipeline"

    @get("/", operation_id="consolePipeline", include_in_schema=False)
    async def pipeline(self, request: Request, tenant: str, cdp: Cdp, console_pipeline: PipelineDep,
                       settings: SettingsDep) -> Template:
        await off_loop(require_tenant, cdp, tenant)
        try:
            runs, runs_error = await off_loop(console_pipeline.runs, tenant, 10), ""
        except Exception as exc:  # noqa: BLE001 - the page says why, and the button still works
            runs, runs_error = [], f"the pipeline's run history could not be read: {exc}"
        return render(request, "pipeline.html", tenant=tenant, runs=runs, runs_error=runs_error,
                      dagster_ui=settings.dagster_ui_url, refresh=bool(runs and runs[0]["in_flight"]))

    @post("/", operation_id="consoleMaterialize", include_in_schema=False, opt={ROLE: "editor"}, status_code=303)
    async def materialize(self, request: Request, tenant: str, cdp: Cdp, console_pipeline: PipelineDep) -> Redirect:
        try:
            await off_loop(require_tenant, cdp, tenant)
            await off_loop(console_pipeline.materialize, tenant)
            await off_loop(cdp.append_audit, tenant, audit_entry(principal(request).actor, "pipeline.materialize", tenant))
        except Conflict as exc:
            flash(request, str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - the helper or the process could not start: say so
            flash(request, f"the run could not be started: {exc}", "error")
        else:
            flash(request, f"Materializing {tenant} through Dagster; its stages appear below as they run.")
        return redirect(f"{PREFIX}/t/{tenant}/pipeline")


EXAMPLE_EXPERIMENT = {
    "name": "boost-sale", "hypothesis": "Boosting sale items raises CTR", "placements": ["recommendations"],
    "variants": [{"name": "control", "weight": 0.5},
                 {"name": "boost", "weight": 0.5,
                  "overlay": {"rules": [{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.3}]}}],
    "primary_metric": "ctr", "guardrails": ["conversion_rate"], "mde": 0.1, "min_days": 7,
}


class ExperimentsController(Controller):
    """The tenant's experiments: definitions, plans, reports; create, stop and promote (editors)."""

    path = f"{PREFIX}/t/{{tenant:str}}/experiments"

    def _page(self, request: Request, cdp: CdpStore, tenant: str, status_code: int = 200, definition: str = "",
              error: InvalidInput | None = None) -> Template:
        report = cdp.get_report(tenant, experiments_lifecycle.REPORT) or {"rows": [], "updated_at": None}
        reports = {r["experiment"]: r for r in report["rows"]}
        return render(request, "experiments.html", status_code=status_code, tenant=tenant,
                      experiments=list(reversed(cdp.list_experiments(tenant))), reports=reports,
                      report_at=report["updated_at"], error=error,
                      definition=definition or json.dumps(EXAMPLE_EXPERIMENT, indent=2))

    @get("/", operation_id="consoleExperiments", include_in_schema=False)
    async def experiments(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        await off_loop(require_tenant, cdp, tenant)
        return await off_loop(self._page, request, cdp, tenant)

    @post("/", operation_id="consoleCreateExperiment", include_in_schema=False, opt={ROLE: "editor"}, status_code=303)
    async def create(self, request: Request, tenant: str, cdp: Cdp) -> Redirect | Template:
        form = await form_of(request)
        text = form.get("definition", "")
        try:
            raw = json.loads(text)
            made = await off_loop(experiments_lifecycle.create, cdp, tenant, raw, principal(request).actor)
        except json.JSONDecodeError as exc:
            error = InvalidInput(f"the definition is not valid JSON ({exc.msg} at line {exc.lineno})", field="definition")
            return await off_loop(self._page, request, cdp, tenant, 422, text, error)
        except (InvalidInput, Conflict) as exc:
            error = exc if isinstance(exc, InvalidInput) else InvalidInput(str(exc))
            return await off_loop(self._page, request, cdp, tenant, 422, text, error)
        needs = ", ".join(f"{v} {n}" for v, n in made["plan"]["units"].items())
        flash(request, f"Experiment {made['name']} runs from now; units needed per variant: {needs}.")
        return redirect(f"{PREFIX}/t/{tenant}/experiments")

    @post("/{name:str}/stop", operation_id="consoleStopExperiment", include_in_schema=False, opt={ROLE: "editor"},
          status_code=303)
    async def stop(self, request: Request, tenant: str, name: str, cdp: Cdp) -> Redirect:
        try:
            await off_loop(experiments_lifecycle.stop, cdp, tenant, name, principal(request).actor)
        except Conflict as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, f"Stopped {name}: every unit sees the live configuration from the next request.")
        return redirect(f"{PREFIX}/t/{tenant}/experiments")

    @post("/{name:str}/traffic", operation_id="consoleExperimentTraffic", include_in_schema=False,
          opt={ROLE: "editor"}, status_code=303)
    async def traffic(self, request: Request, tenant: str, name: str, cdp: Cdp) -> Redirect:
        text = (await form_of(request)).get("traffic", "")
        try:
            share = float(text) / 100
            await off_loop(experiments_lifecycle.set_traffic, cdp, tenant, name, share, principal(request).actor)
        except ValueError:
            flash(request, f"traffic: a percentage from 1 to 100, got {text!r}", "error")
        except (Conflict, InvalidInput) as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, f"{name} now takes {share:.0%} of units: those already in stay in, in their variant.")
        return redirect(f"{PREFIX}/t/{tenant}/experiments")

    @post("/{name:str}/promote", operation_id="consolePromoteVariant", include_in_schema=False, opt={ROLE: "editor"},
          status_code=303)
    async def promote(self, request: Request, tenant: str, name: str, cdp: Cdp) -> Redirect:
        variant = (await form_of(request)).get("variant", "")
        try:
            await off_loop(experiments_lifecycle.promote, cdp, tenant, name, variant, principal(request).actor)
        except (Conflict, InvalidInput, Forbidden) as exc:
            flash(request, str(exc), "error")
        else:
            flash(request, f"{variant} of {name} is the live configuration (a new version: undo it on the "
                           "Configuration page).")
        return redirect(f"{PREFIX}/t/{tenant}/experiments")
