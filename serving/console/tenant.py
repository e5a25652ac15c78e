"""A tenant's read pages: overview, catalog and users (with erasure), and the preview of what the API
answers, each item explained. They call the same ``lodestar`` functions as the API, never copies."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from lodestar.ads import alerts as ads_alerts
from lodestar.ads import report as ads_report
from lodestar.ads.market import LiveLineItem, Placed, Signals
from lodestar.cdp import require_tenant
from lodestar.controls import Controls, parse_diversity
from lodestar.erasure import erase_user
from lodestar.errors import IndexNotReady, InvalidInput, NotFound
from lodestar.explain import Trace
from lodestar.filters import parse_exclude, parse_filter
from lodestar.recommend import (
    nearest_controlled,
    recommend_for_session,
    recommend_for_user,
    similar_items,
    user_history,
)
from lodestar.records import parse_id
from serving.ads import recommendation_signals, sponsored_answer
from serving.auth import ROLE
from serving.console.charts import line_chart
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
    AdsDep,
    Cdp,
    Configs,
    EmbedderDep,
    Indexes,
    IndexStoreDep,
    PipelineDep,
    SettingsDep,
)

MODES = ("user", "session", "similar", "query")


def _evaluation_chart(entries: list[dict[str, Any]]) -> str:
    published = [e for e in reversed(entries) if (e.get("after") or {}).get("ndcg@10") is not None]
    if entries and not published:
        return (f'<p class="empty">{len(entries)} version(s) published, none evaluated: the tenant had too few users '
                "with held-out events (evaluation.min_test_users).</p>")
    labels = [time.strftime("%m-%d %H:%M", time.gmtime(e["at"])) for e in published]  # when each was published
    return line_chart("NDCG@10 of each published version (held-out events), next to popularity's", labels, {
        "Lodestar": [e["after"]["ndcg@10"] for e in published],
        "popularity": [e["after"].get("popularity_ndcg@10") for e in published]})


def _activity_chart(rows: list[dict[str, Any]]) -> str:
    kinds = sorted({k for r in rows for k in r if k != "day"})
    return line_chart("Events per day, by type (event time, UTC)", [r["day"][5:] for r in rows],
                      {k: [r.get(k, 0) for r in rows] for k in kinds}, bars=True)


def _served_charts(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    days = sorted({r["day"] for r in rows})
    strategies = sorted({r["strategy"] for r in rows})
    cell = {(r["day"], r["strategy"]): r for r in rows}

    def per_day(field: str, title: str) -> str:
        return line_chart(title, [d[5:] for d in days],
                          {s: [cell.get((d, s), {}).get(field, 0) for d in days] for s in strategies}, bars=True)

    counts = [per_day("lists", "Served lists per day, by strategy"),
              per_day("clicks", "Attributed clicks per day, by strategy"),
              per_day("conversions", "Attributed conversions (add to cart, purchase) per day, by strategy")]
    ctr = line_chart("CTR per day, by strategy (attributed clicks / impressions)", [d[5:] for d in days],
                     {s: [cell[(d, s)]["ctr"] if (d, s) in cell else None for d in days] for s in strategies},
                     percent=True)
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"lists": 0, "impressions": 0, "clicks": 0,
                                                            "conversions": 0})
    for r in rows:
        for field in ("lists", "impressions", "clicks", "conversions"):
            totals[r["strategy"]][field] += r[field]
    table = [{"strategy": s, **t, "ctr": t["clicks"] / t["impressions"] if t["impressions"] else 0.0}
             for s, t in sorted(totals.items())]
    return [*counts, ctr], table


class OverviewController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}"

    @get("/", operation_id="consoleOverview", include_in_schema=False)
    async def overview(self, request: Request, tenant: str, cdp: Cdp, index_store: IndexStoreDep,
                       console_pipeline: PipelineDep, settings: SettingsDep) -> Template:
        def read() -> dict[str, Any]:
            require_tenant(cdp, tenant)
            activity = cdp.get_report(tenant, "activity")
            served = cdp.get_report(tenant, "attribution")
            served_charts, totals = _served_charts(served["rows"] if served else [])
            return {
                "counts": {e: cdp.count(tenant, e) for e in ("items", "users", "events")},
                "published": index_store.published_record(tenant),
                "evaluation_chart": _evaluation_chart(cdp.read_audit(tenant, 100, action_prefix="index.publish")),
                "activity_chart": _activity_chart(activity["rows"] if activity else []),
                "reports_at": (activity or served or {}).get("updated_at"),
                "served_charts": served_charts, "totals": totals,
            }

        page = await off_loop(read)
        try:
            runs, runs_error = await off_loop(console_pipeline.runs, tenant, 5), ""
        except Exception as exc:  # noqa: BLE001 - the rest of the page stands; it says why runs are missing
            runs, runs_error = [], f"the pipeline's run history could not be read: {exc}"
        return render(request, "overview.html", tenant=tenant, runs=runs, runs_error=runs_error,
                      dagster_ui=settings.dagster_ui_url, **page)


class CatalogController(Controller):
    path = f"{PREFIX}/t/{{tenant:str}}"

    @get("/catalog", operation_id="consoleCatalog", include_in_schema=False)
    async def catalog(self, request: Request, tenant: str, cdp: Cdp, indexes: Indexes, configs: Configs,
                      embedder: EmbedderDep, q: str = "", how: str = "text") -> Template:
        def find() -> list[dict[str, Any]]:
            if how == "meaning" and q.strip():
                published = indexes.get(tenant)  # IndexNotReady (a page saying so) before the first publish
                vector = embedder.encode([q])[0]
                hits = nearest_controlled(published.reader, vector, 20, configs.get(tenant))
                return [{"id": h.item_id, "title": h.payload.get("title", ""), "score": h.score,
                         "categories": h.payload.get("categories", [])} for h in hits]
            return cdp.find(tenant, "items", q.strip(), 50)

        items = await off_loop(find)
        return render(request, "catalog.html", tenant=tenant, q=q, how=how, items=items)

    @get("/items/{item_id:str}", operation_id="consoleItem", include_in_schema=False)
    async def item(self, request: Request, tenant: str, item_id: str, cdp: Cdp, indexes: Indexes,
                   configs: Configs) -> Template:
        def read() -> tuple[dict[str, Any], list[Any]]:
            item = cdp.get_item(tenant, parse_id(item_id, "item_id"))
            if item is None:
                raise NotFound(f"tenant {tenant!r} has no item {item_id!r}")
            try:
                similar = similar_items(indexes.get(tenant).reader, item_id, 10, configs.get(tenant)) or []
            except IndexNotReady:
                similar = []
            return item, similar

        item, similar = await off_loop(read)
        return render(request, "item.html", tenant=tenant, item=item, similar=similar)

    @get("/users", operation_id="consoleUsers", include_in_schema=False)
    async def users(self, request: Request, tenant: str, cdp: Cdp, q: str = "") -> Template:
        users = await off_loop(cdp.find, tenant, "users", q.strip(), 50)
        return render(request, "users.html", tenant=tenant, q=q, users=users)

    @get("/users/{user_id:str}", operation_id="consoleUser", include_in_schema=False)
    async def user(self, request: Request, tenant: str, user_id: str, cdp: Cdp) -> Template:

        def read() -> dict[str, Any]:
            user_id_ = parse_id(user_id, "user_id")
            profile, events = cdp.get_user(tenant, user_id_), cdp.user_events(tenant, user_id_, limit=200)
            if profile is None and not events:
                raise NotFound(f"tenant {tenant!r} has no user {user_id!r}")
            titles = {e["item_id"]: (cdp.get_item(tenant, e["item_id"]) or {}).get("title", "") for e in events[:50]}
            return {"profile": profile, "events": events, "titles": titles,
                    "preferences": cdp.get_preferences(tenant, user_id_)}

        return render(request, "user.html", tenant=tenant, user_id=user_id, **await off_loop(read))

    @get("/users/{user_id:str}/erase", operation_id="consoleEraseConfirm", include_in_schema=False,
         opt={ROLE: "owner"})
    async def erase_confirm(self, request: Request, tenant: str, user_id: str) -> Template:
        return render(request, "erase.html", tenant=tenant, user_id=user_id)

    @post("/users/{user_id:str}/erase", operation_id="consoleErase", include_in_schema=False, opt={ROLE: "owner"},
          status_code=303)
    async def erase(self, request: Request, tenant: str, user_id: str, cdp: Cdp) -> Redirect | Template:
        form = await form_of(request)
        if form.get("confirm", "") != user_id:
            return render(request, "erase.html", status_code=422, tenant=tenant, user_id=user_id,
                          error="type the user's id exactly to confirm the erasure")
        erased = parse_id(user_id, "user_id")
        counts = await off_loop(erase_user, cdp, tenant, erased, principal(request).actor)
        request.app.state.user_states.forget(tenant, erased)
        flash(request, f"Erased user {user_id}: " + ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items()))
        return redirect(f"{PREFIX}/t/{tenant}/users")


PLACEMENT_OF_MODE = {"user": "recommendations", "session": "session", "similar": "similar", "query": "search"}


class PreviewController(Controller):
    """What the API would answer, explained, without serving it (nothing goes to the served log)."""

    path = f"{PREFIX}/t/{{tenant:str}}"

    @get("/preview", operation_id="consolePreview", include_in_schema=False)
    async def preview(self, request: Request, tenant: str, cdp: Cdp, indexes: Indexes, configs: Configs,
                      embedder: EmbedderDep, ads: AdsDep) -> Template:
        params = dict(request.query_params)
        mode = params.get("mode", "user") if params.get("mode") in MODES else "user"

        def run() -> dict[str, Any]:
            if not any(params.get(f) for f in ("user", "items", "item", "query")):
                return {}
            k = int(params.get("k") or 10) if (params.get("k") or "10").isdigit() else 10
            if not 1 <= k <= 100:
                raise InvalidInput("k: must be 1 to 100", field="k")
            published, config, trace = indexes.get(tenant), configs.get(tenant), Trace()
            diversity = parse_diversity(params["diversity"]) if params.get("diversity") else config.diversity
            controls = Controls(parse_filter(params.get("filter") or None), parse_exclude(params.get("exclude") or None),
                                diversity)
            strategy, signals, events, sponsor = None, Signals(), [], {}
            if mode in ("user", "session"):
                if mode == "user":
                    history = user_history(cdp, tenant, parse_id(params.get("user"), "user"))
                    result = recommend_for_user(published, cdp, embedder, tenant, parse_id(params.get("user"), "user"),
                                                k, config, controls, trace, history)
                    events = history[0]
                else:
                    ids = [parse_id(i.strip(), "items") for i in (params.get("items") or "").split(",") if i.strip()]
                    result = recommend_for_session(published, ids, k, config, controls, trace=trace)
                hits, strategy = result.items, result.strategy
                signals = recommendation_signals(config, published, result.taste, result.collab_query, hits)
                sponsor = {"exclude": result.excluded, "item_filter": result.item_filter}
            elif mode == "similar":
                item_id = parse_id(params.get("item"), "item")
                hits = similar_items(published.reader, item_id, k, config, controls, trace)
                if hits is None:
                    raise InvalidInput(f"item: {params.get('item')!r} is not in the published index", field="item")
                source = published.reader.get(item_id)
                signals = Signals(content=source.vector)
                sponsor = {"exclude": frozenset((item_id, *controls.exclude)), "item_filter": controls.item_filter,
                           "categories": frozenset(source.payload.get("categories") or ())}
            else:
                query = (params.get("query") or "").strip()
                if not query:
                    raise InvalidInput("query: must contain some text", field="query")
                vector = embedder.encode([query])[0]
                hits = nearest_controlled(published.reader, vector, k, config, controls, trace=trace)
                signals = Signals(content=vector)
                sponsor = {"exclude": frozenset(controls.exclude), "item_filter": controls.item_filter, "query": query}
            # Sponsored items as the API would place them now (no ad id is made: nothing can be charged).
            sponsored = sponsored_answer(ads, tenant, published, config, PLACEMENT_OF_MODE[mode], k, hits, signals,
                                         True, events=events, **sponsor) if config.ads.enabled else None
            shown = sponsored.items if sponsored is not None else hits
            return {"hits": [(h, None if isinstance(h, Placed) else trace.explanation(h.item_id)) for h in shown],
                    "strategy": strategy, "version": published.version,
                    "auction": sponsored.explanation if sponsored is not None else None}

        try:
            result, error = await off_loop(run), None
        except InvalidInput as exc:
            result, error = {}, exc
        return render(request, "preview.html", status_code=422 if error else 200, tenant=tenant, mode=mode,
                      params=params, error=error, json=json, **result)


class AdsController(Controller):
    """Retail media for the tenant's members: spend, results and incrementality by advertiser and
    line item (from the pipeline's ``ads_report``), the line items serving now, audience segments
    and advertisers' webhooks."""

    path = f"{PREFIX}/t/{{tenant:str}}"

    @get("/ads", operation_id="consoleAds", include_in_schema=False)
    async def ads(self, request: Request, tenant: str, cdp: Cdp, configs: Configs) -> Template:
        def read() -> dict[str, Any]:
            require_tenant(cdp, tenant)
            config = configs.get(tenant)
            stored = cdp.get_report(tenant, ads_report.REPORT) or {}
            rows = stored.get("rows", [])
            now = time.time()
            spend = cdp.ad_spend_all(tenant, time.strftime("%Y-%m-%d", time.gmtime(now)))
            names = {a["id"]: a["name"] for a in cdp.list_advertisers(tenant)}
            line_items = [{**r, **(spend.get(r["id"]) or {"spent_today": 0, "spent_total": 0}),
                           "serving": LiveLineItem.of(r, r["advertiser"]).state(spend.get(r["id"]), now),
                           "advertiser_name": names.get(r["advertiser"], r["advertiser"])}
                          for r in cdp.list_line_items(tenant)]
            by_day = ads_report.totals(rows, ("day", "advertiser"))
            days = sorted({r["day"] for r in by_day})
            series = {names.get(a, a): [next((r["spend"] for r in by_day if r["day"] == d and r["advertiser"] == a),
                                             0.0) for d in days]
                      for a in sorted({r["advertiser"] for r in by_day})}
            sizes = cdp.segment_sizes(tenant)
            return {
                "enabled": config.ads.enabled, "settings": config.ads, "line_items": line_items,
                "totals": ads_report.totals(rows), "names": names,
                "spend_chart": line_chart("Spend per day by advertiser", days, series, bars=True),
                "lifts": (cdp.get_report(tenant, ads_report.INCREMENTALITY_REPORT) or {}).get("rows", []),
                "report_at": stored.get("updated_at"),
                "segments": [{"name": s.name, "kind": "lookalike" if s.lookalike else "rule",
                              "size": sizes.get(s.name, 0)} for s in config.parsed_segments],
                "webhooks": [w for w in cdp.list_webhooks(tenant) if w["status"] != "deleted"],
            }

        return render(request, "ads.html", tenant=tenant, **await off_loop(read))


class AlertsController(Controller):
    """The shop's inbox of retail-media alerts (every advertiser's), read marks per member."""

    path = f"{PREFIX}/t/{{tenant:str}}"

    @get("/alerts", operation_id="consoleAlerts", include_in_schema=False)
    async def alerts(self, request: Request, tenant: str, cdp: Cdp) -> Template:
        reader = principal(request).actor
        found = await off_loop(lambda: ads_alerts.alerts(cdp, tenant, None, reader=reader))
        names = await off_loop(lambda: {a["id"]: a["name"] for a in cdp.list_advertisers(tenant)})
        return render(request, "alerts.html", tenant=tenant, alerts=found, names=names,
                      unread=sum(a["unread"] for a in found))

    @post("/alerts/read", operation_id="consoleAlertsRead", include_in_schema=False, status_code=303,
          opt={ROLE: "editor"})  # a viewer changes nothing, not even read marks
    async def read(self, request: Request, tenant: str, cdp: Cdp) -> Redirect:
        reader = principal(request).actor
        ids = await off_loop(lambda: [a["id"] for a in ads_alerts.alerts(cdp, tenant, None)])
        marked = await off_loop(ads_alerts.mark_read, cdp, tenant, reader, ids)
        flash(request, f"{marked} alerts marked read")
        return redirect(f"{PREFIX}/t/{tenant}/alerts")
