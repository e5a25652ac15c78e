"""Advertisers, and the line items they buy: validated like the tenant configuration (every error
names its field), money in micros, products checked against the tenant's catalog.

A line item belongs to a campaign of one advertiser and promotes products of the catalog at a CPC
bid (optionally per search keyword), within a daily and a total budget, between start and end, on
some placements, for requests its targeting matches (categories; search keywords exact, phrase or
negative), at most ``frequency_cap`` times a day per user; ``status`` is ``active`` or ``paused``
(``ended`` and ``exhausted`` are derived from the time and the ledger)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from lodestar.ads.bidding import parse_goal
from lodestar.ads.money import parse_money
from lodestar.cdp import CdpStore, audit_entry, require_tenant
from lodestar.errors import Conflict, InvalidInput, NotFound
from lodestar.experiments.definition import PLACEMENTS
from lodestar.keys import issue_key, key_id_of
from lodestar.records import check_text, parse_id, parse_schedule_time
from lodestar.tenant_config import effective_config

SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FIELDS = ("id", "campaign", "name", "products", "bid", "keyword_bids", "daily_budget", "total_budget", "start",
          "end", "placements", "targeting", "frequency_cap", "status", "holdout", "goal")
DEFAULT_HOLDOUT = 0.10  # the share of users a campaign never shows its ads, to measure what they do
STATUSES = ("active", "paused")
MAX_PRODUCTS = 1000
ADVERTISER_SCOPE = "advertiser"


def slug(name: str) -> str:
    """An id made of a name: lowercase letters, digits and dashes."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]
    if not text:
        raise InvalidInput("name: needs at least one letter or digit", field="name")
    return text


def _words(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 200 or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidInput(f"{field}: a list of up to 200 non-empty texts", field=field)
    return [check_text(v.strip().lower(), field) for v in value]


def _name(value: Any, default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InvalidInput("name: text of 1 to 200 characters", field="name")
    return check_text(value.strip(), "name")


def parse_line_item(raw: Any, advertiser: str, missing_products: Callable[[list[str]], list[str]],
                    now: float | None = None, segments: Iterable[str] = ()) -> dict[str, Any]:
    """A line item as stored, from what an advertiser sent; ``missing_products`` names the ids the
    tenant's catalog does not hold (they are refused: an ad must be for something the shop sells);
    ``segments``: the tenant's audience segments, the only ones it may target."""
    now = time.time() if now is None else now
    if not isinstance(raw, dict):
        raise InvalidInput("a line item must be a JSON object")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field; known: {', '.join(FIELDS)}", field=unknown[0])
    ident = raw.get("id")
    if not isinstance(ident, str) or not SLUG.match(ident):
        raise InvalidInput("id: 1-63 lowercase letters, digits, '-' or '_'", field="id")
    products = raw.get("products")
    if not isinstance(products, list) or not 1 <= len(products) <= MAX_PRODUCTS:
        raise InvalidInput(f"products: a list of 1 to {MAX_PRODUCTS} product ids from the catalog", field="products")
    products = list(dict.fromkeys(parse_id(p, f"products[{n}]") for n, p in enumerate(products)))
    if missing := missing_products(products):
        raise InvalidInput(f"products: not in the catalog (or unavailable): {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""), field="products")
    goal = parse_goal(raw.get("goal"))
    if goal is not None and raw.get("bid") is not None:
        raise InvalidInput("bid: a line item with a goal has no bid (the bidder sets each auction's, up to "
                           "goal.max_bid)", field="bid")
    if goal is not None and raw.get("keyword_bids"):
        raise InvalidInput("keyword_bids: a line item with a goal has no keyword bids (the bidder sets each "
                           "auction's bid, up to goal.max_bid)", field="keyword_bids")
    bid = goal.max_bid if goal is not None else parse_money(raw.get("bid"), "bid")
    if bid <= 0:
        raise InvalidInput("bid: a cost per click above 0", field="bid")
    keyword_bids = raw.get("keyword_bids") or {}
    if not isinstance(keyword_bids, dict) or len(keyword_bids) > 500:
        raise InvalidInput("keyword_bids: an object of search keyword to CPC bid", field="keyword_bids")
    parsed_bids = {}
    for keyword, amount in keyword_bids.items():
        word = check_text(keyword.strip().lower(), "keyword_bids")
        if not word or len(word) > 100:
            raise InvalidInput("keyword_bids: keywords of 1 to 100 characters", field="keyword_bids")
        parsed_bids[word] = parse_money(amount, f"keyword_bids.{word}")
        if parsed_bids[word] <= 0:
            raise InvalidInput(f"keyword_bids.{word}: a cost per click above 0", field=f"keyword_bids.{word}")
    keyword_bids = parsed_bids
    daily, total = parse_money(raw.get("daily_budget"), "daily_budget"), parse_money(raw.get("total_budget"), "total_budget")
    if daily <= 0 or total <= 0:
        raise InvalidInput("daily_budget and total_budget: amounts above 0", field="daily_budget" if daily <= 0 else "total_budget")
    if daily > total:
        raise InvalidInput("daily_budget: at most the total budget", field="daily_budget")
    start, end = parse_schedule_time(raw.get("start"), "start") or now, parse_schedule_time(raw.get("end"), "end")
    if end is not None and end <= start:
        raise InvalidInput("end: must be after start", field="end")
    placements = raw.get("placements", list(PLACEMENTS))
    if not isinstance(placements, list) or not placements or any(p not in PLACEMENTS for p in placements):
        raise InvalidInput(f"placements: a list of {', '.join(PLACEMENTS)}", field="placements")
    targeting = raw.get("targeting") or {}
    if not isinstance(targeting, dict) or set(targeting) - {"categories", "keywords", "segments"}:
        raise InvalidInput("targeting: an object with categories and keywords", field="targeting")
    audiences = _words(targeting.get("segments"), "targeting.segments")
    known = set(segments)
    if unknown_segments := [a for a in audiences if a not in known]:
        raise InvalidInput(f"targeting.segments: {unknown_segments[0]!r} is not an audience segment of this shop "
                           f"(GET /v1/ads/segments lists them)", field="targeting.segments")
    keywords = targeting.get("keywords") or {}
    if not isinstance(keywords, dict) or set(keywords) - {"exact", "phrase", "negative"}:
        raise InvalidInput("targeting.keywords: an object with exact, phrase and negative lists",
                           field="targeting.keywords")
    cap = raw.get("frequency_cap")
    if cap is not None and (not isinstance(cap, dict) or set(cap) != {"per_user_per_day"} or isinstance(
            cap["per_user_per_day"], bool) or not isinstance(cap["per_user_per_day"], int) or cap["per_user_per_day"] < 1):
        raise InvalidInput("frequency_cap: {\"per_user_per_day\": n}, n at least 1", field="frequency_cap")
    status = raw.get("status", "active")
    if status not in STATUSES:
        raise InvalidInput(f"status: one of {', '.join(STATUSES)}", field="status")
    holdout = raw.get("holdout", DEFAULT_HOLDOUT)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout <= 0.5:
        raise InvalidInput("holdout: the share of users held out of the campaign's ads, from 0 (none) to 0.5",
                           field="holdout")
    campaign = raw.get("campaign", ident)
    if not isinstance(campaign, str) or not SLUG.match(campaign):
        raise InvalidInput("campaign: 1-63 lowercase letters, digits, '-' or '_'", field="campaign")
    return {
        "id": ident, "advertiser": advertiser, "campaign": campaign,
        "name": _name(raw.get("name"), ident),
        "products": products, "bid": bid, "keyword_bids": keyword_bids, "daily_budget": daily, "total_budget": total,
        "start": start, "end": end, "placements": list(dict.fromkeys(placements)),
        "targeting": {"categories": _words(targeting.get("categories"), "targeting.categories"),
                      "segments": audiences,
                      "keywords": {kind: _words(keywords.get(kind), f"targeting.keywords.{kind}")
                                   for kind in ("exact", "phrase", "negative")}},
        "frequency_cap": cap, "status": status, "holdout": float(holdout),
        "goal": goal.as_dict() if goal is not None else None,
    }


def create_advertiser(store: CdpStore, tenant: str, name: str, actor: str) -> tuple[dict[str, Any], str]:
    """A new advertiser of the tenant and its first key (shown once): the key sees and changes only
    that advertiser's line items and spend, never the tenant's users or another advertiser's data."""
    require_tenant(store, tenant)
    name = check_text(str(name).strip(), "name")
    if not name:
        raise InvalidInput("name: the advertiser's display name", field="name")
    advertiser = store.create_advertiser(tenant, {"id": slug(name), "name": name})
    # The scope "advertiser" grants nothing a tenant route asks for (and no older release knows it).
    key = issue_key(store, tenant, (ADVERTISER_SCOPE,), f"advertiser {advertiser['id']}", advertiser=advertiser["id"])
    store.append_audit(tenant, audit_entry(actor, "advertiser.create", advertiser["id"], None,
                                           {**advertiser, "key_id": key_id_of(key)}))
    return advertiser, key


def _catalog_check(store: CdpStore, tenant: str) -> Callable[[list[str]], list[str]]:
    def missing(ids: Iterable[str]) -> list[str]:
        return [i for i in ids if not (item := store.get_item(tenant, i)) or not item.get("available", True)]
    return missing


def create_line_item(store: CdpStore, tenant: str, advertiser: str, raw: Any, actor: str) -> dict[str, Any]:
    config = effective_config(require_tenant(store, tenant)["config"])
    sizes = store.segment_sizes(tenant)
    record = parse_line_item(raw, advertiser, _catalog_check(store, tenant),
                             segments=[s.name for s in config.parsed_segments])
    small = [s for s in record["targeting"]["segments"] if sizes.get(s, 0) < config.ads.audience_min_size]
    if small:
        raise InvalidInput(f"targeting.segments: {small[0]!r} has fewer than {config.ads.audience_min_size} members "
                           "(the shop's minimum audience): too small to target", field="targeting.segments")
    siblings = [r for r in store.list_line_items(tenant, advertiser) if r.get("campaign") == record["campaign"]]
    if siblings and any(abs(r.get("holdout", 0.0) - record["holdout"]) > 1e-9 for r in siblings):
        raise InvalidInput(f"holdout: campaign {record['campaign']!r} holds out {siblings[0].get('holdout', 0.0):g} "
                           "of its users; its line items share one holdout (or measuring it would mix its groups)",
                           field="holdout")
    made = store.put_line_item(tenant, record)
    store.append_audit(tenant, audit_entry(actor, "line_item.create", made["id"], None, made))
    return made


def line_item_of(store: CdpStore, tenant: str, advertiser: str | None, line_item: str) -> dict[str, Any]:
    """The line item, if ``advertiser`` owns it (``None``: the tenant's admin, any advertiser's)."""
    found = store.get_line_item(tenant, line_item)
    if found is None or (advertiser is not None and found["advertiser"] != advertiser):
        raise NotFound(f"no line item {line_item!r} of this advertiser")  # the same answer for another's
    return found


def set_status(store: CdpStore, tenant: str, advertiser: str | None, line_item: str, status: str, actor: str
               ) -> dict[str, Any]:
    if status not in STATUSES:
        raise InvalidInput(f"status: one of {', '.join(STATUSES)}", field="status")
    found = line_item_of(store, tenant, advertiser, line_item)
    if found["status"] == status:
        raise Conflict(f"line item {line_item!r} is already {status}")
    changed = store.put_line_item(tenant, {**found, "status": status}, if_updated_at=found["updated_at"])
    store.append_audit(tenant, audit_entry(actor, "line_item.status", line_item, {"status": found["status"]},
                                           {"status": status}))
    return changed
