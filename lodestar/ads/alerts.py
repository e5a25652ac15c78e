"""Alerts: what needs an advertiser's or the shop's attention, for the console's inbox and
``GET /v1/ads/alerts``.

Two kinds, each with an id that stays the same while the happening lasts (so "read" sticks):

* the happenings the webhooks send (:func:`lodestar.ads.notify.happenings`: budget at 80% and
  100%, a line item or a campaign ended; ROAS and iROAS thresholds are each webhook's own, so they
  are not alerts);
* pacing and bidding anomalies of active line items: one that stopped serving (its budget cannot
  pay its highest bid, today or in total); spend far behind (under half) or far ahead (over
  one and a half times) of the day's pace, once a quarter of the day's traffic has passed; and a
  goal line item missing its target by more than a quarter once it has spent 20 max bids.

Read marks are kept per reader (a console member, or an advertiser) in the CDP store.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from lodestar.ads import notify, pacing
from lodestar.ads.market import LiveLineItem
from lodestar.ads.money import MICROS
from lodestar.cdp import CdpStore

SEVERITY = {"budget.80": "info", "budget.100": "warning", "line_item.ended": "info", "campaign.ended": "info",
            "stopped_serving": "warning", "behind_pace": "info", "ahead_of_pace": "warning", "goal_missed": "warning"}
MESSAGES = {
    "budget.80": "{line_item} has spent 80% of its {budget} budget",
    "budget.100": "{line_item} cannot pay another click from its {budget} budget",
    "line_item.ended": "{line_item} ended",
    "campaign.ended": "campaign {campaign} ended (its last line item did)",
    "stopped_serving": "{line_item} stopped serving: {why}",
    "behind_pace": "{line_item} is far behind today's pace: {spent:.2f} of {target:.2f} expected by now",
    "ahead_of_pace": "{line_item} is far ahead of today's pace: {spent:.2f} of {target:.2f} expected by now",
    "goal_missed": "{line_item} misses its goal: {what} (the bidder keeps adjusting; check the goal and max bid)",
}


def _id(*parts: str) -> str:
    return "alert_" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]


def alerts(store: CdpStore, tenant: str, advertiser: str | None, now: float | None = None,
           reader: str | None = None) -> list[dict[str, Any]]:
    """The alerts of one advertiser (``None``: of every advertiser), newest kinds first, each with
    ``unread`` for ``reader``."""
    now = time.time() if now is None else now
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    advertisers = [advertiser] if advertiser is not None else [a["id"] for a in store.list_advertisers(tenant)]
    spend = store.ad_spend_all(tenant, day)
    report = store.get_report(tenant, "traffic_curve")
    curve = pacing.traffic_curve([r.get("lists", 0) for r in report["rows"]] if report else [])
    share = pacing.expected_share(curve, now % 86400)
    out: list[dict[str, Any]] = []
    records = {who: store.list_line_items(tenant, who) for who in advertisers}  # read once, used thrice
    for who in advertisers:
        for event in notify.happenings(store, tenant, who, now, records[who]):
            if event["type"] in MESSAGES:
                data = event["data"]
                out.append({"id": event["id"], "type": event["type"], "advertiser": who,
                            "line_item": data.get("line_item"), "campaign": data.get("campaign"),
                            "message": MESSAGES[event["type"]].format(line_item=data.get("line_item"),
                                                                      campaign=data.get("campaign"),
                                                                      budget=data.get("budget", ""))})
        for record in records[who]:
            li = LiveLineItem.of(record, who)
            if li.status != "active" or now < li.start or (li.end is not None and now >= li.end):
                continue
            spent = (spend.get(li.id) or {"spent_today": 0, "spent_total": 0})
            state = li.state(spent, now)
            base = {"advertiser": who, "line_item": li.id, "campaign": li.campaign}
            if state in ("exhausted", "spent_today"):
                why = "its total budget is spent" if state == "exhausted" else "today's budget is spent"
                out.append({**base, "id": _id(tenant, li.id, "stopped", state, day if state == "spent_today" else ""),
                            "type": "stopped_serving", "message": MESSAGES["stopped_serving"].format(
                                line_item=li.id, why=why)})
                continue
            target = share * li.daily_budget / MICROS
            today = spent["spent_today"] / MICROS
            if share >= 0.25 and today < 0.5 * target:
                out.append({**base, "id": _id(tenant, li.id, "behind", day), "type": "behind_pace",
                            "message": MESSAGES["behind_pace"].format(line_item=li.id, spent=today, target=target)})
            elif share >= 0.25 and today > 1.5 * target and today > 0.1 * li.daily_budget / MICROS:
                out.append({**base, "id": _id(tenant, li.id, "ahead", day), "type": "ahead_of_pace",
                            "message": MESSAGES["ahead_of_pace"].format(line_item=li.id, spent=today, target=target)})
    out += _goal_alerts(store, tenant, records, day)
    read = set(read_marks(store, tenant, reader)) if reader else set()
    for alert in out:
        alert["severity"] = SEVERITY[alert["type"]]
        alert["unread"] = alert["id"] not in read
    return sorted(out, key=lambda a: (not a["unread"], a["severity"] != "warning", a["type"], a["line_item"] or ""))


def _goal_alerts(store: CdpStore, tenant: str, records: dict[str, list[dict[str, Any]]], day: str
                 ) -> list[dict[str, Any]]:
    """A bidding anomaly: a goal line item whose results, once it has spent 20 max bids, miss its
    target by more than a quarter (ROAS under 75% of it, or CPA over 125%)."""
    totals: dict[str, dict[str, float]] = {}
    for r in (store.get_report(tenant, "ads") or {}).get("rows", []):
        t = totals.setdefault(r["line_item"], {"spend": 0.0, "conversions": 0.0, "revenue": 0.0})
        for column in t:
            t[column] += r.get(column) or 0.0
    out = []
    for who, line_items in records.items():
        for record in line_items:
            goal, t = record.get("goal"), totals.get(record["id"])
            if not goal or not t or t["spend"] < 20 * goal["max_bid"] / MICROS:
                continue
            what = None
            if goal["type"] == "target_roas" and t["revenue"] / t["spend"] < 0.75 * goal["target"]:
                what = f"ROAS {t['revenue'] / t['spend']:.2f} against a target of {goal['target']:g}"
            elif goal["type"] == "target_cpa" and (not t["conversions"] or t["spend"] / t["conversions"]
                                                   > 1.25 * goal["target"]):
                cpa = f"{t['spend'] / t['conversions']:.2f}" if t["conversions"] else "no conversion yet"
                what = f"CPA {cpa} against a target of {goal['target']:g}"
            if what:
                out.append({"id": _id(tenant, record["id"], "goal", day), "type": "goal_missed", "advertiser": who,
                            "line_item": record["id"], "campaign": record.get("campaign"),
                            "message": MESSAGES["goal_missed"].format(line_item=record["id"], what=what)})
    return out


def _marks(reader: str) -> str:
    return f"alerts_read:{reader}"


def read_marks(store: CdpStore, tenant: str, reader: str) -> list[str]:
    return [r["id"] for r in (store.get_report(tenant, _marks(reader)) or {}).get("rows", [])]


def mark_read(store: CdpStore, tenant: str, reader: str, ids: list[str]) -> int:
    """Mark alerts read for ``reader`` (the last 1,000 marks are kept); returns how many are new."""
    known = read_marks(store, tenant, reader)
    new = [i for i in dict.fromkeys(ids) if i not in set(known)]
    store.put_report(tenant, _marks(reader), [{"id": i} for i in (known + new)[-1000:]])
    return len(new)
