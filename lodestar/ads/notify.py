"""Advertisers' webhooks: what happened to their campaigns, sent as signed JSON events.

An advertiser registers a URL (its key, ``POST /v1/ads/webhooks``) and gets a signing secret, shown
once. The pipeline's ``ads_notifications`` sensor (every 30 s) finds what happened and queues one
event per happening, each with a stable ``id`` (a line item reaching 80% or 100% of its daily budget
is one event per day; of its total budget, one event; a line item ending, and a campaign ending
(its last line item), one event each; a line item's
last-click ROAS or a campaign's iROAS under the webhook's threshold, one per day), then delivers
what is due:

* ``POST`` with the JSON body ``{"id", "type", "created_at", "tenant", "advertiser", "data"}`` and the
  headers ``Lodestar-Event-Id`` and ``Lodestar-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
  "<t>.<body>" with the secret>`` (so a receiver checks the body and refuses replays by their age);
* a 2xx answer delivers it; anything else (or no answer in 10 s) is retried after 30 s, 1, 2, 4
  minutes and so on up to an hour; every attempt is logged and visible to the advertiser
  (``GET /v1/ads/webhooks/{id}/deliveries``). A retry carries the same event id (receivers
  deduplicate by it);
* a webhook that has failed for a day is disabled (its pending events fail) and the advertiser's
  report says so;
* a URL that names or resolves to a loopback, private, link-local or reserved address is refused at
  registration and at each send (``LODESTAR_WEBHOOKS_ALLOW_PRIVATE=1`` allows it), and a failed
  attempt logs no error text beyond its kind, so webhooks cannot probe the shop's network;
* each tick claims what it sends (two senders never take the same event) and stops after 40 s.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from lodestar.ads.market import LiveLineItem
from lodestar.ads.money import MICROS
from lodestar.cdp import CdpStore, audit_entry
from lodestar.errors import InvalidInput, NotFound

log = logging.getLogger("lodestar.ads")

EVENT_TYPES = ("budget.80", "budget.100", "line_item.ended", "campaign.ended", "roas.below", "iroas.below")
TIMEOUT_S = 10.0
FIRST_RETRY_S = 30.0
MAX_RETRY_S = 3600.0
DISABLE_AFTER_S = 86400.0
DAY_S = 86400


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Lodestar-Signature`` header of a body sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, now: float | None = None, tolerance_s: float = 300) -> bool:
    """What a receiver runs: the signature matches the body, and it is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    fresh = abs((time.time() if now is None else now) - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), header)


def _threshold(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10_000:
        raise InvalidInput(f"{key}: a ratio from 0 to 10000 (revenue per unit of spend)", field=key)
    return float(value)


def register(store: CdpStore, tenant: str, advertiser: str, raw: Any, actor: str) -> tuple[dict[str, Any], str]:
    """A new webhook of the advertiser and its signing secret (shown once)."""
    if not isinstance(raw, dict) or set(raw) - {"url", "events", "roas_below", "iroas_below"}:
        raise InvalidInput("a webhook is {\"url\", \"events\", \"roas_below\", \"iroas_below\"}")
    url = raw.get("url")
    parsed = urlparse(url) if isinstance(url, str) else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2048:
        raise InvalidInput("url: an http or https URL of at most 2048 characters", field="url")
    events = raw.get("events", list(EVENT_TYPES))
    if not isinstance(events, list) or not events or any(e not in EVENT_TYPES for e in events):
        raise InvalidInput(f"events: a list of {', '.join(EVENT_TYPES)}", field="events")
    refused = private_address(url)
    if refused and "does not resolve" not in refused:  # a name that resolves later is checked at each send
        raise InvalidInput(f"url: {refused}", field="url")
    secret = "whsec_" + secrets.token_urlsafe(32)
    record = {"id": "wh_" + uuid.uuid4().hex[:16], "advertiser": advertiser, "url": url,
              "events": list(dict.fromkeys(events)), "roas_below": _threshold(raw, "roas_below"),
              "iroas_below": _threshold(raw, "iroas_below"), "secret": secret, "status": "active",
              "failing_since": None, "disabled_reason": None, "created_at": time.time()}
    made = store.put_webhook(tenant, record)
    store.append_audit(tenant, audit_entry(actor, "webhook.create", record["id"], None, public(made)))
    return public(made), secret


def public(webhook: dict[str, Any]) -> dict[str, Any]:
    """A webhook as its advertiser sees it (never its secret)."""
    return {k: v for k, v in webhook.items() if k not in ("secret", "tenant")}


def webhook_of(store: CdpStore, tenant: str, advertiser: str, webhook_id: str) -> dict[str, Any]:
    found = store.get_webhook(tenant, webhook_id)
    if found is None or found["advertiser"] != advertiser or found["status"] == "deleted":
        raise NotFound(f"no webhook {webhook_id!r} of this advertiser")
    return found


def delete(store: CdpStore, tenant: str, advertiser: str, webhook_id: str, actor: str) -> dict[str, Any]:
    found = webhook_of(store, tenant, advertiser, webhook_id)
    changed = store.put_webhook(tenant, {**{k: v for k, v in found.items() if k != "tenant"}, "status": "deleted"},
                                if_updated_at=found["updated_at"])
    store.append_audit(tenant, audit_entry(actor, "webhook.delete", webhook_id, public(found), None))
    return public(changed)


# -- what happened -------------------------------------------------------------------------------
def _event_id(*parts: str) -> str:
    return "evt_" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def happenings(store: CdpStore, tenant: str, advertiser: str, now: float,
               line_items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """What happened to the advertiser's line items (``line_items``, when the caller read them) and
    campaigns, each with a stable event id."""
    records = store.list_line_items(tenant, advertiser) if line_items is None else line_items
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    spend = store.ad_spend_all(tenant, day)
    out: list[dict[str, Any]] = []
    report = (store.get_report(tenant, "ads") or {}).get("rows", [])
    lifts = (store.get_report(tenant, "ads_incrementality") or {}).get("rows", [])
    for record in records:
        li = LiveLineItem.of(record, advertiser)
        spent = spend.get(li.id) or {"spent_today": 0, "spent_total": 0}
        base = {"line_item": li.id, "campaign": li.campaign, "spent_today": spent["spent_today"] / MICROS,
                "spent_total": spent["spent_total"] / MICROS, "daily_budget": li.daily_budget / MICROS,
                "total_budget": li.total_budget / MICROS}
        for scope, used, budget, when in (("daily", spent["spent_today"], li.daily_budget, day),
                                          ("total", spent["spent_total"], li.total_budget, "total")):
            if used >= 0.8 * budget:
                out.append({"type": "budget.80", "id": _event_id(tenant, li.id, "budget.80", scope, when),
                            "data": {**base, "budget": scope}})
            if budget - used < li.max_bid:  # what is left cannot pay a click: out of the auctions
                out.append({"type": "budget.100", "id": _event_id(tenant, li.id, "budget.100", scope, when),
                            "data": {**base, "budget": scope}})
        if li.end is not None and now >= li.end:
            out.append({"type": "line_item.ended", "id": _event_id(tenant, li.id, "ended"),
                        "data": {**base, "ended_at": li.end}})
        rows = [r for r in report if r["line_item"] == li.id]
        money = sum(r["spend"] for r in rows)
        if money > 0:
            roas = sum(r["revenue"] for r in rows) / money
            out.append({"type": "roas.below", "id": _event_id(tenant, li.id, "roas", day), "roas": roas,
                        "data": {**base, "roas": round(roas, 4)}})
    campaigns: dict[str, list[float | None]] = {}
    for record in records:
        campaigns.setdefault(record.get("campaign", record["id"]), []).append(record.get("end"))
    for campaign, ends in campaigns.items():
        if all(end is not None and now >= end for end in ends):  # every line item of it has ended
            out.append({"type": "campaign.ended", "id": _event_id(tenant, advertiser, campaign, "ended"),
                        "data": {"campaign": campaign, "ended_at": max(ends)}})
    for lift in lifts:
        if lift["advertiser"] == advertiser and lift.get("iroas") is not None:
            out.append({"type": "iroas.below", "id": _event_id(tenant, advertiser, lift["campaign"], "iroas", day),
                        "iroas": lift["iroas"], "data": {"campaign": lift["campaign"], "iroas": lift["iroas"],
                                                         "iroas_low": lift["iroas_low"],
                                                         "iroas_high": lift["iroas_high"]}})
    return out


def queue_new(store: CdpStore, tenant: str, now: float) -> int:
    """Queue, for every active webhook of the tenant, the events it asked for that are new."""
    queued = 0
    by_advertiser: dict[str, list[dict[str, Any]]] = {}
    for webhook in store.list_webhooks(tenant):
        if webhook["status"] == "active":
            by_advertiser.setdefault(webhook["advertiser"], []).append(webhook)
    for advertiser, hooks in by_advertiser.items():
        events = happenings(store, tenant, advertiser, now)
        for hook in hooks:
            rows = []
            for event in events:
                if event["type"] not in hook["events"]:
                    continue
                if event["type"] == "roas.below" and (hook["roas_below"] is None or event["roas"] >= hook["roas_below"]):
                    continue
                if event["type"] == "iroas.below" and (hook["iroas_below"] is None
                                                       or event["iroas"] >= hook["iroas_below"]):
                    continue
                rows.append({"webhook_id": hook["id"], "event_id": event["id"], "type": event["type"],
                             "created_at": now, "payload": {"id": event["id"], "type": event["type"], "created_at": now,
                                                            "tenant": tenant, "advertiser": advertiser,
                                                            "data": event["data"]}})
            queued += store.enqueue_notifications(tenant, rows)
    return queued


# -- delivery ------------------------------------------------------------------------------------
Post = Callable[[str, bytes, dict[str, str]], int]  # url, body, headers -> status code (raises on no answer)


def deliver_due(store: CdpStore, now: float, post: Post, limit: int = 100, budget_s: float = 40.0,
                clock: Callable[[], float] = time.time) -> dict[str, int]:
    """Send due notifications (claimed first, so no other sender takes them) until ``budget_s``
    has passed; returns how many were delivered, retried and failed."""
    counts = {"delivered": 0, "retried": 0, "failed": 0}
    started = clock()
    for note in store.claim_notifications(now, limit, lease_s=max(120.0, 2 * budget_s)):
        if clock() - started > budget_s:
            break  # the rest stays claimed until its lease ends, then is due again
        try:
            counts[_deliver_one(store, note, now, post)] += 1
        except Exception:  # noqa: BLE001 - one notification (a deleted tenant, a race) never stops the rest
            log.exception("could not deliver notification %s of tenant %s", note["event_id"], note["tenant"])
    return counts


def _deliver_one(store: CdpStore, note: dict[str, Any], now: float, post: Post) -> str:
    tenant = note["tenant"]
    hook = store.get_webhook(tenant, note["webhook_id"])
    if hook is None or hook["status"] != "active":
        store.record_attempt(tenant, note["webhook_id"], note["event_id"],
                             {"ts": now, "error": "the webhook is disabled or deleted"}, "failed", None)
        return "failed"
    body = json.dumps(note["payload"], separators=(",", ":"), sort_keys=True).encode()
    attempt: dict[str, Any] = {"ts": now, "attempt": len(note["attempts"]) + 1}
    refused = private_address(hook["url"])
    if refused:
        attempt["error"] = refused
        ok = False
    else:
        headers = {"Content-Type": "application/json", "Lodestar-Event-Id": note["event_id"],
                   "Lodestar-Signature": sign(hook["secret"], int(time.time()), body)}  # signed as it leaves
        try:
            code = post(hook["url"], body, headers)
            attempt["status_code"] = code
            ok = 200 <= code < 300
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is a failed attempt
            attempt["error"] = f"no answer ({type(exc).__name__})"  # not the message: no probing of networks
            ok = False
    if ok:
        store.record_attempt(tenant, hook["id"], note["event_id"], attempt, "delivered", None)
        if hook.get("failing_since") is not None:
            _set(store, tenant, hook, failing_since=None)
        return "delivered"
    failing_since = hook.get("failing_since") or now
    if now - failing_since >= DISABLE_AFTER_S:
        store.record_attempt(tenant, hook["id"], note["event_id"], attempt, "failed", None)
        _set(store, tenant, hook, status="disabled", failing_since=failing_since,
             disabled_reason=f"every delivery failed for a day (last: {attempt.get('status_code') or attempt.get('error')})")
        return "failed"
    wait = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** len(note["attempts"]))
    store.record_attempt(tenant, hook["id"], note["event_id"], attempt, "pending", now + wait)
    if hook.get("failing_since") is None:
        _set(store, tenant, hook, failing_since=now)
    return "retried"


def private_address(url: str) -> str | None:
    """Why a webhook URL may not be called (it names or resolves to a loopback, private, link-local
    or reserved address: the shop's own network is no advertiser's to reach), or ``None``. Set
    ``LODESTAR_WEBHOOKS_ALLOW_PRIVATE=1`` to allow them (a test or a closed network)."""
    if os.environ.get("LODESTAR_WEBHOOKS_ALLOW_PRIVATE") == "1":
        return None
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (socket.gaierror, UnicodeError):
        return f"the host {host!r} does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                or ip.is_unspecified:
            return "refused: the URL reaches a private, loopback or link-local address"
    return None


def _set(store: CdpStore, tenant: str, hook: dict[str, Any], **changes: Any) -> None:
    record = {k: v for k, v in hook.items() if k != "tenant"}
    stored = store.put_webhook(tenant, {**record, **changes}, if_updated_at=hook["updated_at"])
    hook.update(changes, updated_at=stored["updated_at"])


def http_post(url: str, body: bytes, headers: dict[str, str]) -> int:
    import httpx

    return httpx.post(url, content=body, headers=headers, timeout=TIMEOUT_S, follow_redirects=False).status_code
