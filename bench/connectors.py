"""What a connector costs over the import format: the same events imported from a GA4 export
(Parquet and newline-delimited JSON) and from canonical files, side by side in one run.

    .venv/bin/python bench/connectors.py [--rows 50000] [--rounds 2]

Generates a GA4 BigQuery-export-shaped table (``--rows`` rows with the export's usual columns:
event_params, device, geo, traffic_source, ...; a third ``page_view`` that is skipped, the rest ``view_item``, ``add_to_cart``, ``view_item_list`` with three items and ``purchase``
with two; 2,000 products, 5,000 users with user properties) and the canonical events, items and users
files holding exactly what the GA4 import stores. Each round imports every one into a fresh tenant,
in turn, and checks both tenants hold the same events. Prints source rows per second, stored events
per second, and each connector's time over the canonical import's (the baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.connectors.importing import import_source  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.settings import Settings  # noqa: E402

T0 = 1761955200


def generate(rows: int, seed: int = 7) -> tuple[list[dict], dict[str, list[dict]]]:
    rng = np.random.default_rng(seed)
    products = [{"item_id": f"SKU-{n:05d}", "item_name": f"Product {n}", "item_brand": f"Brand {n % 40}",
                 "item_category": f"Cat {n % 25}", "item_category2": f"Sub {n % 90}", "price": float(5 + n % 200)}
                for n in range(2000)]
    ga4, events = [], []
    for n in range(rows):
        user = f"u{rng.integers(5000):05d}"
        ts = T0 + n
        kind = rng.choice(["page_view", "page_view", "page_view", "view_item", "view_item", "add_to_cart",
                           "view_item_list", "purchase", "view_item"])
        picks = {"view_item_list": 3, "purchase": 2, "page_view": 0}.get(str(kind), 1)
        items = [dict(products[i], quantity=1) for i in rng.choice(2000, size=picks, replace=False)] if picks else []
        ga4.append({"event_date": "20251101", "event_name": str(kind), "event_timestamp": ts * 1_000_000,
                    "event_params": [{"key": k, "value": {"string_value": v, "int_value": None}} for k, v in (
                        ("page_location", f"https://shop.example/p/{n}"), ("page_title", "A product page"),
                        ("ga_session_id", str(ts // 1800)), ("engagement_time_msec", "1200"),
                        ("page_referrer", "https://www.google.com/"))],
                    "user_id": user, "user_pseudo_id": f"{user}.1", "items": items,
                    "user_properties": [{"key": "tier", "value": {"string_value": f"t{int(user[1:]) % 3}",
                                                                  "int_value": None}}],
                    "device": {"category": "mobile", "operating_system": "iOS", "language": "en-us",
                               "web_info": {"browser": "Safari", "hostname": "shop.example"}},
                    "geo": {"continent": "Europe", "country": "Germany", "region": "Berlin", "city": "Berlin"},
                    "traffic_source": {"name": "(organic)", "medium": "organic", "source": "google"},
                    "platform": "WEB", "stream_id": "1234567890"})
        etype = {"view_item": "view", "add_to_cart": "add_to_cart", "view_item_list": "impression",
                 "purchase": "purchase"}.get(str(kind))
        for item in items if etype else ():
            events.append({"user_id": user, "item_id": item["item_id"], "type": etype, "ts": ts,
                           "value": item["price"] if etype == "purchase" else None})
    canonical = {
        "items": [{"id": p["item_id"], "title": p["item_name"], "categories": [p["item_category"], p["item_category2"]],
                   "attributes": {"brand": p["item_brand"], "price": p["price"]}} for p in products],
        "users": [{"id": f"u{n:05d}", "attributes": {"tier": f"t{n % 3}"}} for n in range(5000)],
        "events": events,
    }
    return ga4, canonical


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50000, help="GA4 rows (events of the export)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-connectors-"))
    ga4, canonical = generate(args.rows)
    parquet, ndjson = work / "events_20251101.parquet", work / "events_20251101.jsonl"
    pq.write_table(pa.Table.from_pylist(ga4), parquet)
    ndjson.write_text("".join(json.dumps({**r, "event_timestamp": str(r["event_timestamp"])}) + "\n" for r in ga4))
    files = {}
    for entity, rows in canonical.items():
        files[entity] = work / f"{entity}.jsonl"
        files[entity].write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{args.rows} GA4 rows -> {len(canonical['events'])} events, {len(canonical['items'])} items, "
          f"{len(canonical['users'])} users; work dir {work}")

    settings = Settings(data_dir=work / "var")
    store = open_cdp(settings)
    times: dict[str, list[float]] = {"canonical JSONL (baseline)": [], "ga4 Parquet": [], "ga4 JSON lines": []}
    try:
        for round_no in range(args.rounds):
            for name in times:
                tenant = f"r{round_no}-{name.split()[0]}-{name.split()[1].lower()}"
                store.create_tenant(tenant)
                start = time.perf_counter()
                if name.startswith("canonical"):
                    import_files(store, settings, tenant, files)
                else:
                    import_source(store, settings, tenant, "ga4", parquet if "Parquet" in name else ndjson)
                times[name].append(time.perf_counter() - start)
                stored = store.count(tenant, "events")
                assert stored == len({(e["user_id"], e["item_id"], e["type"], e["ts"]) for e in canonical["events"]}), \
                    (name, stored)
    finally:
        store.close()
    base = min(times["canonical JSONL (baseline)"])
    print(f"{'source':<28} {'best s':>8} {'GA4 rows/s':>11} {'events/s':>10} {'/ baseline':>10}")
    for name, values in times.items():
        best = min(values)
        print(f"{name:<28} {best:8.2f} {args.rows / best:11.0f} {len(canonical['events']) / best:10.0f} "
              f"{best / base:10.2f}")


if __name__ == "__main__":
    main()
