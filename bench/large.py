"""A large synthetic shop tenant for the scaling benchmarks, generated vectorized (seconds for 1M
events) in the canonical JSONL import format: every item text is distinct, so embedding cost is real.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lodestar.demo import BRANDS, COLORS, DAY, END, LINES, SHOP_CATEGORIES, _iso

EVENT_TYPES = np.array(["view", "add_to_cart", "purchase"])


def item_row(i: int, rng: np.random.Generator, revision: int = 0) -> dict:
    cats = list(SHOP_CATEGORIES)
    cat = cats[i % len(cats)]
    spec = SHOP_CATEGORIES[cat]
    noun = spec["nouns"][rng.integers(len(spec["nouns"]))]
    w1, w2 = rng.choice(spec["words"], size=2, replace=False)
    brand = BRANDS[rng.integers(len(BRANDS))]
    lo, hi = spec["price"]
    model_code = f"{chr(65 + i % 26)}{i // 26:04d}"
    edition = f" (edition {revision + 1})" if revision else ""
    return {
        "id": f"p{i:06d}",
        "kind": "product",
        "title": f"{brand} {LINES[rng.integers(len(LINES))]} {w1} {noun} {model_code}{edition}",
        "description": f"A {w1} {noun} with {w2}. Made by {brand} for everyday {cat}.",
        "categories": [cat],
        "tags": ["sale"] if rng.random() < 0.15 else [],
        "attributes": {"brand": brand, "price": round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2),
                       "color": COLORS[rng.integers(len(COLORS))]},
        "available": True,
        "updated_at": _iso(END - 120 * DAY),
    }


def write_tenant(out: Path, n_items: int, n_users: int, n_events: int, seed: int = 3) -> dict[str, Path]:
    """Write items, users and events JSONL under ``out``; return entity -> path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = {entity: out / f"{entity}.jsonl" for entity in ("items", "users", "events")}
    with paths["items"].open("w") as fh:
        for i in range(n_items):
            fh.write(json.dumps(item_row(i, rng)) + "\n")

    n_cats = len(SHOP_CATEGORIES)
    per_cat = [np.arange(c, n_items, n_cats) for c in range(n_cats)]
    favourite = rng.integers(n_cats, size=n_users)
    with paths["users"].open("w") as fh:
        cats = list(SHOP_CATEGORIES)
        for u in range(n_users):
            fh.write(json.dumps({"id": f"u{u:05d}", "attributes": {"interests": [cats[favourite[u]]]}}) + "\n")

    # Each event: a user (heavy-tailed activity), a category (favourite 80%), a Zipf-popular item in it.
    activity = rng.pareto(1.5, size=n_users) + 1.0
    users = rng.choice(n_users, size=n_events, p=activity / activity.sum())
    cat = np.where(rng.random(n_events) < 0.8, favourite[users], rng.integers(n_cats, size=n_events))
    ranks = np.minimum(rng.zipf(1.3, size=n_events) - 1, min(len(p) for p in per_cat) - 1)
    items = np.fromiter((per_cat[c][r] for c, r in zip(cat, ranks, strict=True)), dtype=np.int64, count=n_events)
    types = EVENT_TYPES[rng.choice(3, size=n_events, p=[0.8, 0.15, 0.05])]
    ts = np.round(END - rng.uniform(0, 90 * DAY, size=n_events), 3)
    with paths["events"].open("w") as fh:
        for u, i, t, s in zip(users, items, types, ts, strict=True):
            fh.write(f'{{"user_id":"u{u:05d}","item_id":"p{i:06d}","type":"{t}","ts":{s}}}\n')
    return paths
