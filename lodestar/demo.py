"""Deterministic synthetic demo data: an e-shop and a content site, in the import format, and
loading them as the demo's tenants.

Users have latent tastes (favourite categories or topics, a price band) and their events follow
them, so a recommender that learns taste beats one that does not. The same seed gives the same files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lodestar.accounts import add_member, ensure_account, generated_password
from lodestar.cdp import ALL_SCOPES, CdpStore
from lodestar.importer import import_files
from lodestar.keys import create_key
from lodestar.settings import Settings

END = datetime(2026, 10, 31, tzinfo=UTC).timestamp()
DAY = 86400.0

SHOP_CATEGORIES: dict[str, dict[str, Any]] = {
    "running": {"nouns": ["running shoe", "trail shoe", "running shorts", "running jacket", "race vest"],
                "words": ["breathable mesh", "cushioned sole", "grippy outsole", "lightweight", "reflective trim"],
                "price": (30, 180)},
    "hiking": {"nouns": ["hiking boot", "backpack", "trekking pole", "rain shell", "fleece"],
               "words": ["waterproof", "ankle support", "durable nylon", "alpine", "packable"],
               "price": (25, 300)},
    "kitchen": {"nouns": ["chef knife", "frying pan", "dutch oven", "cutting board", "espresso maker"],
                "words": ["stainless steel", "non-stick", "cast iron", "dishwasher safe", "ergonomic handle"],
                "price": (15, 250)},
    "coffee": {"nouns": ["coffee grinder", "pour-over kettle", "coffee beans", "milk frother", "french press"],
               "words": ["single origin", "burr", "gooseneck", "medium roast", "borosilicate glass"],
               "price": (8, 200)},
    "audio": {"nouns": ["wireless headphones", "bluetooth speaker", "earbuds", "turntable", "soundbar"],
              "words": ["noise cancelling", "deep bass", "long battery life", "hi-fi", "water resistant"],
              "price": (20, 400)},
    "gaming": {"nouns": ["gaming mouse", "mechanical keyboard", "controller", "gaming headset", "monitor"],
               "words": ["rgb lighting", "low latency", "144hz", "programmable buttons", "ergonomic"],
               "price": (20, 500)},
    "books": {"nouns": ["mystery novel", "cookbook", "science fiction novel", "biography", "travel guide"],
              "words": ["bestselling", "illustrated", "hardcover", "award winning", "paperback"],
              "price": (6, 45)},
    "garden": {"nouns": ["garden hose", "pruning shears", "raised bed", "seed kit", "watering can"],
               "words": ["heavy duty", "rust proof", "organic", "expandable", "cedar wood"],
               "price": (5, 150)},
    "yoga": {"nouns": ["yoga mat", "yoga block", "meditation cushion", "resistance band", "foam roller"],
             "words": ["non-slip", "eco friendly cork", "extra thick", "portable", "high density"],
             "price": (10, 120)},
    "baby": {"nouns": ["stroller", "baby carrier", "crib mattress", "diaper bag", "high chair"],
             "words": ["foldable", "organic cotton", "adjustable", "easy clean", "compact"],
             "price": (20, 600)},
    "pets": {"nouns": ["dog bed", "cat tree", "dog leash", "pet fountain", "chew toy"],
             "words": ["orthopedic", "washable cover", "reflective", "quiet pump", "durable rubber"],
             "price": (8, 180)},
    "photography": {"nouns": ["mirrorless camera", "tripod", "camera lens", "camera bag", "ring light"],
                    "words": ["full frame", "carbon fiber", "wide aperture", "weather sealed", "dimmable"],
                    "price": (30, 2000)},
}
LINES = ["Pro", "Lite", "Max", "Air", "Sport", "Classic", "Trail", "Urban", "Edge", "Flex"]
PLACES = ["in Europe", "in Asia", "in Africa", "in the Americas", "at home", "this year", "this winter",
          "after the summer", "for beginners", "for families", "in ten charts", "in five minutes"]
BRANDS = ["Acme", "Zeta", "Northwind", "Lumen", "Orbit", "Kestrel", "Tandem", "Willow", "Vertex", "Harbor"]
COLORS = ["black", "white", "blue", "red", "green", "grey", "orange"]

NEWS_TOPICS: dict[str, dict[str, list[str]]] = {
    "climate": {"subjects": ["heatwaves", "sea level rise", "carbon capture", "wildfires", "glacier melt"],
                "angles": ["new data show", "scientists warn about", "cities adapt to", "the economics of"]},
    "ai": {"subjects": ["large language models", "robotics", "machine learning in medicine", "AI regulation", "chip design"],
           "angles": ["a guide to", "researchers debate", "startups bet on", "the limits of"]},
    "football": {"subjects": ["the title race", "transfer window", "youth academies", "the world cup", "tactics"],
                 "angles": ["analysis of", "what we learned from", "fans react to", "inside"]},
    "cooking": {"subjects": ["sourdough bread", "weeknight pasta", "vegetarian curries", "knife skills", "fermentation"],
                "angles": ["how to master", "ten recipes for", "the science of", "a beginner's guide to"]},
    "travel": {"subjects": ["night trains in europe", "island hopping", "budget backpacking", "national parks", "city breaks"],
               "angles": ["the best", "a week of", "tips for", "hidden gems of"]},
    "finance": {"subjects": ["interest rates", "index funds", "housing markets", "inflation", "retirement savings"],
                "angles": ["what rising", "explaining", "investors weigh", "a plain guide to"]},
    "health": {"subjects": ["sleep", "strength training", "gut microbiome", "running injuries", "mental health"],
               "angles": ["new research on", "experts explain", "myths about", "how to improve"]},
    "space": {"subjects": ["mars missions", "exoplanets", "the james webb telescope", "reusable rockets", "the moon base"],
              "angles": ["the latest on", "astronomers find", "the race for", "what is next for"]},
    "music": {"subjects": ["vinyl revival", "jazz festivals", "indie bands", "film scores", "music streaming"],
              "angles": ["a review of", "the story behind", "why we love", "the future of"]},
    "politics": {"subjects": ["election polls", "housing policy", "trade deals", "climate policy", "local government"],
                 "angles": ["what to know about", "the debate over", "voters weigh", "a briefing on"]},
}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _zipf_choice(rng: np.random.Generator, options: list[str], a: float = 1.1) -> str:
    weights = 1.0 / np.arange(1, len(options) + 1) ** a
    return options[rng.choice(len(options), p=weights / weights.sum())]


def _session_times(rng: np.random.Generator, n: int, days_back: tuple[float, float]) -> list[float]:
    """``n`` increasing event times (whole milliseconds) between a random start and ``END``."""
    start = END - rng.uniform(*days_back) * DAY
    return [round(float(t), 3) for t in np.sort(rng.uniform(start, END - 3600, size=n))]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def shop(n_items: int = 2400, n_users: int = 600, seed: int = 7) -> dict[str, list[dict[str, Any]]]:
    """An e-shop: products with title, description, categories, brand and price; views, carts, purchases."""
    rng = np.random.default_rng(seed)
    cats = list(SHOP_CATEGORIES)
    items, by_cat = [], {c: [] for c in cats}
    for i in range(n_items):
        cat = cats[i % len(cats)]
        spec = SHOP_CATEGORIES[cat]
        noun = spec["nouns"][rng.integers(len(spec["nouns"]))]
        words = list(rng.choice(spec["words"], size=2, replace=False))
        brand = BRANDS[rng.integers(len(BRANDS))]
        lo, hi = spec["price"]
        price = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
        item_id = f"p{i:05d}"
        items.append({
            "id": item_id,
            "kind": "product",
            "title": f"{brand} {LINES[rng.integers(len(LINES))]} {words[0]} {noun}",
            "description": f"A {words[0]} {noun} with {words[1]}. Made by {brand} for everyday {cat}.",
            "categories": [cat],
            "tags": [t for t, p in (("sale", 0.15), ("new", 0.1), ("bestseller", 0.05)) if rng.random() < p],
            "attributes": {"brand": brand, "price": price, "color": COLORS[rng.integers(len(COLORS))]},
            "available": bool(rng.random() > 0.03),
            "updated_at": _iso(END - 120 * DAY),
        })
        by_cat[cat].append(item_id)
    users, events = [], []
    for u in range(n_users):
        favourite = list(rng.choice(cats, size=int(rng.integers(1, 3)), replace=False))
        user_id = f"u{u:04d}"
        users.append({"id": user_id, "attributes": {"interests": favourite, "country": str(rng.choice(["DE", "FR", "US", "GB", "NL"]))}})
        for t in _session_times(rng, int(rng.integers(8, 40)), days_back=(10, 90)):
            cat = favourite[rng.integers(len(favourite))] if rng.random() < 0.85 else cats[rng.integers(len(cats))]
            item_id = _zipf_choice(rng, by_cat[cat])
            events.append({"user_id": user_id, "item_id": item_id, "type": "view", "ts": t})
            if rng.random() < 0.25:
                events.append({"user_id": user_id, "item_id": item_id, "type": "add_to_cart", "ts": t + 60})
                if rng.random() < 0.5:
                    events.append({"user_id": user_id, "item_id": item_id, "type": "purchase", "ts": t + 300})
    return {"items": items, "users": users, "events": events}


def news(n_items: int = 1200, n_users: int = 400, seed: int = 11) -> dict[str, list[dict[str, Any]]]:
    """A content site: articles with title, abstract and topic; views, clicks, likes and dislikes."""
    rng = np.random.default_rng(seed)
    topics = list(NEWS_TOPICS)
    items, by_topic = [], {t: [] for t in topics}
    for i in range(n_items):
        topic = topics[i % len(topics)]
        spec = NEWS_TOPICS[topic]
        subject = spec["subjects"][rng.integers(len(spec["subjects"]))]
        angle = spec["angles"][rng.integers(len(spec["angles"]))]
        other = spec["subjects"][rng.integers(len(spec["subjects"]))]
        item_id = f"a{i:05d}"
        items.append({
            "id": item_id,
            "kind": "content",
            "title": f"{angle.capitalize()} {subject} {PLACES[rng.integers(len(PLACES))]}",
            "description": f"Our {topic} desk looks at {subject} and what it means for {other}, "
                           f"with {int(rng.integers(2, 12))} takeaways.",
            "categories": [topic],
            "tags": [subject.split()[0]],
            "attributes": {"reading_minutes": int(rng.integers(2, 15))},
            "updated_at": _iso(END - rng.uniform(1, 200) * DAY),
        })
        by_topic[topic].append(item_id)
    users, events = [], []
    for u in range(n_users):
        interests = list(rng.choice(topics, size=int(rng.integers(1, 4)), replace=False))
        disliked = [t for t in topics if t not in interests][rng.integers(len(topics) - len(interests))]
        user_id = f"r{u:04d}"
        users.append({"id": user_id, "attributes": {"interests": interests}})
        for ts in _session_times(rng, int(rng.integers(5, 30)), days_back=(5, 60)):
            topic = interests[rng.integers(len(interests))] if rng.random() < 0.8 else topics[rng.integers(len(topics))]
            item_id = _zipf_choice(rng, by_topic[topic])
            events.append({"user_id": user_id, "item_id": item_id, "type": "view", "ts": ts})
            if topic in interests and rng.random() < 0.3:
                events.append({"user_id": user_id, "item_id": item_id, "type": "like", "ts": ts + 120})
            if topic == disliked:
                events.append({"user_id": user_id, "item_id": item_id, "type": "dislike", "ts": ts + 30})
    return {"items": items, "users": users, "events": events}


GENERATORS = {"shop": shop, "news": news}


def write_demo(out_dir: Path, tenant: str, **sizes: int) -> dict[str, Path]:
    """Write one demo tenant's items, users and events as JSONL; return entity -> path."""
    data = GENERATORS[tenant](**sizes)
    paths = {}
    for entity, rows in data.items():
        paths[entity] = out_dir / tenant / f"{entity}.jsonl"
        _write_jsonl(paths[entity], rows)
    return paths


# Per demo tenant, a user, an item and a search query that the printed curl examples ask about.
EXAMPLES = {
    "shop": ("u0001", "p00001", "waterproof hiking boots"),
    "news": ("r0001", "a00001", "rockets going to mars"),
}


def load_demo_tenants(
    store: CdpStore, settings: Settings, say: Callable[[str], None] = lambda _line: None,
) -> dict[str, str]:
    """Generate every demo tenant's files under ``<data_dir>/demo``, create the tenant if it is new,
    import the files (a re-import upserts) and issue a fresh API key. Returns tenant -> key."""
    keys: dict[str, str] = {}
    for tenant in GENERATORS:
        say(f"Generating and importing demo tenant {tenant!r}...")
        files = write_demo(settings.data_dir / "demo", tenant)
        if store.get_tenant(tenant) is None:
            store.create_tenant(tenant)
        keys[tenant] = create_key(store, tenant, ALL_SCOPES, "demo", DEMO_ACTOR)
        import_files(store, settings, tenant, files, progress=lambda line: say(f"  {line}"))
    return keys


DEMO_ACTOR = "demo"
# The demo shop sells sponsored placements to two of its brands (retail media, on for the demo).
DEMO_ADVERTISERS = (("Kestrel", "0.60", "25"), ("Northwind", "0.35", "40"))
# Its audience segments (lodestar.segments), for line-item targeting and experiments.
DEMO_SEGMENTS = [
    {"name": "runners", "description": "bought or carted running gear this year",
     "rule": {"event": ["purchase", "add_to_cart"], "category": "running", "days": 365}},
    {"name": "kestrel-fans", "rule": {"event": "view", "brand": "Kestrel", "days": 365, "min": 3}},
    {"name": "us-shoppers", "rule": {"all": [{"attribute": "country", "in": ["US"]},
                                             {"event": "purchase", "days": 365}]}},
    {"name": "runner-lookalikes", "lookalike": {"seed": "runners", "size": 100}},
]


def demo_retail_media(store: CdpStore, tenant: str = "shop") -> dict[str, str]:
    """Turn retail media on for the demo shop, with its audience segments and two advertisers, each
    promoting its brand's products in one line item (made once; a later run leaves them and their
    spend alone), and give each advertiser a fresh key. Returns advertiser name -> key."""
    from lodestar.ads.campaigns import ADVERTISER_SCOPE, create_line_item, slug
    from lodestar.keys import issue_key
    from lodestar.tenant_config import validate_config

    record = store.get_tenant(tenant)
    config = dict(record["config"] or {})
    if "ads" not in config or "segments" not in config:
        config.setdefault("ads", {"enabled": True, "positions": [1, 5], "reserve": 0.05})
        config.setdefault("segments", DEMO_SEGMENTS)
        store.set_tenant_config(tenant, validate_config(config))
    items = [i for batch in store.read_changes(tenant, "items") for i in batch if i["available"] and not i["deleted"]]
    keys = {}
    for name, bid, budget in DEMO_ADVERTISERS:
        ident = slug(name)
        if store.get_advertiser(tenant, ident) is None:
            store.create_advertiser(tenant, {"id": ident, "name": name})
        if store.get_line_item(tenant, f"{ident}-demo") is None:
            products = [i["id"] for i in items if (i.get("attributes") or {}).get("brand") == name][:200]
            create_line_item(store, tenant, ident, {"id": f"{ident}-demo", "campaign": "demo", "products": products,
                                                    "bid": bid, "daily_budget": budget, "total_budget": "1000"},
                             DEMO_ACTOR)
        keys[name] = issue_key(store, tenant, (ADVERTISER_SCOPE,), f"advertiser {ident} (demo)", advertiser=ident)
    return keys


def demo_accounts(store: CdpStore, tenants: list[str]) -> list[tuple[str, str, str]]:
    """Console accounts for the demo, each with a new password on every run (shown once, as the
    keys are): an operator, and an owner of each demo tenant. Returns (email, password, role)."""
    accounts = []
    password = generated_password()
    ensure_account(store, "operator@lodestar.demo", password, DEMO_ACTOR, operator=True)
    accounts.append(("operator@lodestar.demo", password, "operator: every tenant"))
    for tenant in tenants:
        email, password = f"owner@{tenant}.demo", generated_password()
        ensure_account(store, email, password, DEMO_ACTOR)
        add_member(store, tenant, email, "owner", DEMO_ACTOR)
        accounts.append((email, password, f"owner of {tenant}"))
    return accounts


def announcement(keys: dict[str, str], base: str, accounts: list[tuple[str, str, str]] = (),
                 advertisers: dict[str, str] | None = None) -> list[str]:
    """What the demo prints once the API at ``base`` is up: the console's address and sign-ins,
    and each tenant's key with curl calls that work as printed."""
    lines = ["", f"The API is up at {base} (OpenAPI: {base}/schema). Press Ctrl+C to stop."]
    if accounts:
        lines += ["", f"Console: {base}/console/ — sign in as (passwords shown once):"]
        lines += [f"  {email}  password {password}  ({role})" for email, password, role in accounts]
    for tenant, key in keys.items():
        user, item, query = EXAMPLES[tenant]
        auth = f'-H "Authorization: Bearer {key}"'
        lines += [
            "",
            f"Tenant {tenant!r}, API key (shown once): {key}",
            f'  curl -s {auth} "{base}/v1/users/{user}/recommendations?k=5"',
            f'  curl -s {auth} "{base}/v1/items/{item}/similar?k=5"',
            f"  curl -s {auth} -H 'Content-Type: application/json' -d '{{\"query\": \"{query}\", \"k\": 5}}' {base}/v1/search",
        ]
    if advertisers:
        lines += ["", "Retail media is on for 'shop' (sponsored items at positions 1 and 5 of its lists). "
                      "Advertiser keys (shown once):"]
        for name, key in advertisers.items():
            lines += [f"  {name}: {key}",
                      f'    curl -s -H "Authorization: Bearer {key}" "{base}/v1/ads/line-items"']
    lines += ["", "Dagster UI: .venv/bin/lodestar ui"]
    return lines
