"""An advertiser's own console page, after signing in with its API key: its line items (serving, or
why not), results and incrementality, its alerts inbox and its webhooks. It sees nothing of the
shop's users or of other advertisers (the same data as its key's ``/v1/ads`` routes)."""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, get, post
from litestar.response import Redirect, Template

from lodestar.ads import alerts as ads_alerts
from lodestar.ads import notify
from lodestar.ads import report as ads_report
from lodestar.ads.market import LiveLineItem
from serving.auth import ADVERTISER_PAGE
from serving.console.web import PREFIX, flash, off_loop, principal, redirect, render
from serving.dependencies import Cdp


class AdvertiserConsoleController(Controller):
    path = f"{PREFIX}/ads"
    opt = {ADVERTISER_PAGE: True}

    @get("/", operation_id="consoleAdvertiser", include_in_schema=False)
    async def page(self, request: Request, cdp: Cdp) -> Template:
        who = principal(request)
        tenant, mine = who.tenant, who.advertiser

        def read() -> dict[str, Any]:
            now = time.time()
            spend = cdp.ad_spend_all(tenant, time.strftime("%Y-%m-%d", time.gmtime(now)))
            line_items = [{**r, **(spend.get(r["id"]) or {"spent_today": 0, "spent_total": 0}),
                           "serving": LiveLineItem.of(r, mine).state(spend.get(r["id"]), now)}
                          for r in cdp.list_line_items(tenant, mine)]
            rows = [r for r in (cdp.get_report(tenant, ads_report.REPORT) or {}).get("rows", [])
                    if r["advertiser"] == mine]
            lifts = [r for r in (cdp.get_report(tenant, ads_report.INCREMENTALITY_REPORT) or {}).get("rows", [])
                     if r["advertiser"] == mine]
            found = ads_alerts.alerts(cdp, tenant, mine, reader=f"advertiser:{mine}")
            return {"name": (cdp.get_advertiser(tenant, mine) or {}).get("name", mine), "line_items": line_items,
                    "totals": ads_report.totals(rows), "lifts": lifts, "alerts": found,
                    "unread": sum(a["unread"] for a in found),
                    "webhooks": [notify.public(w) for w in cdp.list_webhooks(tenant)
                                 if w["advertiser"] == mine and w["status"] != "deleted"]}

        return render(request, "advertiser.html", **await off_loop(read))

    @post("/alerts/read", operation_id="consoleAdvertiserAlertsRead", include_in_schema=False, status_code=303)
    async def read_alerts(self, request: Request, cdp: Cdp) -> Redirect:
        who = principal(request)
        ids = await off_loop(lambda: [a["id"] for a in ads_alerts.alerts(cdp, who.tenant, who.advertiser)])
        marked = await off_loop(ads_alerts.mark_read, cdp, who.tenant, f"advertiser:{who.advertiser}", ids)
        flash(request, f"{marked} alerts marked read")
        return redirect(f"{PREFIX}/ads")
