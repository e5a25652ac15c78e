"""What retail media adds to a user recommendation: 1,000 active line items over 10,000 promoted
products, side by side with retail media off, the same requests.

    .venv/bin/python bench/ads.py [--items 10000] [--users 2000] [--line-items 1000] [--requests 2000]
                                  [--embed-model all-MiniLM-L6-v2] [--keep DIR]

One demo shop of ``--items`` products (``lodestar.demo``'s shop generator, imported with
``import_files``) is materialized through Dagster with the real model (``--keep DIR`` keeps the data
dir; a second run with the same DIR reuses it). 100 advertisers get ``--line-items`` line items of
10 products each (every product promoted once, bids from 0.10 to 2.00, budgets that do not run out
during the run; a fifth target categories, a tenth carry a frequency cap, so the per-request checks
run too). Then, in one run:

1. **In process** (the serving code without HTTP and its noise), twice: with relevance as the ads'
   quality (part 1) and with a published ad-quality model (pCTR x bid, part 3). For each of
   ``--requests`` users in turn, the organic recommendation (``recommend_for_user``, what the API computes with retail media
   off) and then what retail media adds to it (``serving.ads``: the request's eligibility, relevance
   of the promoted products, the auction, the positions, the ad ids). Printed: p50 and p99 of the
   organic recommendation and of what the ads add (issue 16's goal: at most 2 ms at p50 and 5 ms at
   p99), and whether every list's organic items were the organic recommendation's, in order, minus
   the ad slots.
2. **Over HTTP** (`lodestar serve`, one kept-alive connection): the same users' ``GET
   /v1/users/{id}/recommendations?k=10`` in alternating passes with retail media off and on (the
   tenant's configuration switched through ``PUT /v1/config`` between passes). Printed: p50 and p99
   of each, the difference, and the organic check between the two passes of each user.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_server, stop  # noqa: E402
from lodestar import demo  # noqa: E402
from lodestar.ads import campaigns  # noqa: E402
from lodestar.ads.market import Placed  # noqa: E402
from lodestar.cdp import cdp_session  # noqa: E402
from lodestar.controls import Controls  # noqa: E402
from lodestar.embed import Embedder  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.index import open_index_store  # noqa: E402
from lodestar.keys import issue_key  # noqa: E402
from lodestar.recommend import recommend_for_user, user_history  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from lodestar.tenant_config import effective_config, validate_config  # noqa: E402
from pipelines.run import materialize_in_process  # noqa: E402
from serving.ads import TenantAds, recommendation_signals, request_for  # noqa: E402

TENANT = "shop"
ADS = {"enabled": True, "positions": [1, 5], "reserve": 0.05, "relevance_floor": 0.1}
MARKER = "bench-ads.json"
# A published ad-quality model (lodestar.ads.quality): every feature used, so its cost is the full one.
QUALITY_MODEL = {"features": ["relevance", "position_inv", "popularity", "log_price", "line_item_ctr", "advertiser_ctr",
                              "search", "similar", "session"], "coef": [1.2, 0.6, 0.4, -0.2, 0.8, 0.3, 0.2, -0.1, 0.1],
                 "intercept": -3.0, "mean": [0.4, 0.6, 0.3, 3.5, 0.05, 0.05, 0.2, 0.2, 0.2],
                 "scale": [0.2, 0.4, 0.2, 1.0, 0.02, 0.02, 0.4, 0.4, 0.4],
                 "advertiser_ctr": {f"brand-{n:03d}": 0.03 + (n % 5) / 100 for n in range(100)},
                 "prior_ctr": 0.05, "line_item_ctr": {f"li-{n:04d}": 0.02 + (n % 7) / 100 for n in range(1000)}}


def prepare(settings: Settings, args: argparse.Namespace) -> str:
    marker = settings.data_dir / MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["key"]
    with cdp_session(settings) as store:
        store.create_tenant(TENANT)
        key = issue_key(store, TENANT)
        files = demo.write_demo(settings.data_dir.parent / "input", "shop", n_items=args.items, n_users=args.users)
        summary = import_files(store, settings, TENANT, files)
        print(f"imported {summary.accepted if hasattr(summary, 'accepted') else ''} rows", flush=True)
    started = time.perf_counter()
    result = materialize_in_process(str(settings.data_dir), TENANT)
    assert result.success, "materializing the shop failed"
    print(f"materialized {args.items} items in {time.perf_counter() - started:.0f} s", flush=True)
    with cdp_session(settings) as store:
        products = [i["id"] for batch in store.read_changes(TENANT, "items") for i in batch if i["available"]]
        categories = sorted({c for batch in store.read_changes(TENANT, "items") for i in batch for c in i["categories"]})
        rng = random.Random(16)
        advertisers = [campaigns.create_advertiser(store, TENANT, f"Brand {n:03d}", "bench")[0]["id"] for n in range(100)]
        for n in range(args.line_items):
            chunk = products[(n * 10) % len(products):(n * 10) % len(products) + 10]
            raw = {"id": f"li-{n:04d}", "products": chunk, "bid": f"{rng.uniform(0.10, 2.00):.2f}",
                   "daily_budget": "100000", "total_budget": "1000000"}
            if n % 5 == 0:
                raw["targeting"] = {"categories": rng.sample(categories, 2)}
            if n % 10 == 1:
                raw["frequency_cap"] = {"per_user_per_day": 3}
            campaigns.create_line_item(store, TENANT, advertisers[n % 100], raw, "bench")
    marker.write_text(json.dumps({"key": key}))
    return key


def set_ads(store, enabled: bool) -> None:
    record = store.get_tenant(TENANT)
    config = dict(record["config"] or {})
    config["ads"] = {**ADS, "enabled": enabled}
    store.set_tenant_config(TENANT, validate_config(config))


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50) * 1e3), float(np.percentile(values, 99) * 1e3)


def organic_kept(organic: list[str], answer: list[tuple[str, bool]]) -> bool:
    shown = [i for i, sponsored in answer if not sponsored]
    return shown == organic[:len(shown)] and len(answer) == len(organic)


def in_process(settings: Settings, users: list[str]) -> None:
    index_store = open_index_store(settings)
    published = index_store.open_published(TENANT)
    embedder = Embedder(settings.embed_model, settings.cache_dir, backend=settings.embed_backend,
                        models_dir=settings.models_dir)
    with cdp_session(settings) as store:
        set_ads(store, True)
        config = effective_config(store.get_tenant(TENANT)["config"])
        ads = TenantAds(store, settings.secret("ads", "LODESTAR_ADS_SECRET"))
        market = ads.market(TENANT, published, config.ads)
        print(f"market: {sum(len(b.line_items) for b in market.by_placement.values()) // 4} line items per placement "
              f"(on average), {len(market.table)} promoted products", flush=True)
        results = {}
        for label, model in (("relevance as quality", None), ("with the ad-quality model", QUALITY_MODEL)):
            if model is not None:  # a published model, as the ad_quality_model asset writes it
                store.put_report(TENANT, "ad_quality", [model])
                ads._states.clear()
                market = ads.market(TENANT, published, config.ads)
            results[label] = measure(store, ads, published, embedder, config, users)
        store.put_report(TENANT, "ad_quality", [])
    published.close()
    for label, (organic_t, added_t, kept, with_ads) in results.items():
        (o50, o99), (a50, a99) = pct(organic_t), pct(added_t)
        print(f"in process, {len(users)} users, {label}: organic recommendation p50 {o50:.2f} ms, p99 {o99:.2f} ms")
        print(f"  retail media adds: p50 {a50:.3f} ms, p99 {a99:.3f} ms (goal <= 2 ms and <= 5 ms): "
              f"{'ok' if a50 <= 2 and a99 <= 5 else 'OVER'}; ratios {a50 / 2:.2f}, {a99 / 5:.2f}")
        print(f"  lists with ads: {with_ads}/{len(users)}; organic items kept in order minus the ad slots: "
              f"{kept}/{len(users)}", flush=True)


def measure(store, ads, published, embedder, config, users):
    """The organic recommendation and what the ads add to it, per user (after a warm-up pass)."""
    organic_t, added_t, kept, with_ads = [], [], 0, 0
    for n, user in enumerate(users * 2):
        started = time.perf_counter()
        history = user_history(store, TENANT, user)
        result = recommend_for_user(published, store, embedder, TENANT, user, 10, config, Controls(), None, history)
        middle = time.perf_counter()
        request = request_for("recommendations", 10, result.items,
                              recommendation_signals(config, published, result.taste, result.collab_query,
                                                     result.items),
                              result.excluded, result.item_filter, events=history[0], user_id=user)
        placed = ads.place(TENANT, published, config, request)
        ids = [ads.ad_id(TENANT, p, "recommendations", time.time()) for p in placed.placed]
        ended = time.perf_counter()
        if n < len(users):
            continue  # the first pass warms the caches
        organic_t.append(middle - started)
        added_t.append(ended - middle)
        answer = [(e.product, True) if isinstance(e, Placed) else (e.item_id, False) for e in placed.items]
        kept += organic_kept([h.item_id for h in result.items], answer)
        with_ads += bool(ids)
    return organic_t, added_t, kept, with_ads


def over_http(settings: Settings, key: str, users: list[str], passes: int) -> None:
    env = {**os.environ, "LODESTAR_DATA_DIR": str(settings.data_dir), "LODESTAR_EMBED_MODEL": settings.embed_model}
    process, client = start_server(env, headers={"Authorization": f"Bearer {key}"})
    times: dict[bool, list[float]] = {False: [], True: []}
    lists: dict[bool, dict[str, list[tuple[str, bool]]]] = {False: {}, True: {}}
    try:
        for n in range(passes * 2 + 1):
            enabled = bool(n % 2)
            answer = client.put("/v1/config", json={"config": {"ads": {**ADS, "enabled": enabled}}})
            assert answer.status_code == 200, answer.text
            time.sleep(2.5)  # every process sees the change within a second or two
            for user in users:
                started = time.perf_counter()
                body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10})
                elapsed = time.perf_counter() - started
                assert body.status_code == 200, body.text
                if n:  # the first pass warms up
                    times[enabled].append(elapsed)
                    lists[enabled][user] = [(i["id"], bool(i.get("sponsored"))) for i in body.json()["items"]]
    finally:
        stop(process)
    (f50, f99), (n50, n99) = pct(times[False]), pct(times[True])
    kept = sum(organic_kept([i for i, _ in lists[False][u]], lists[True][u]) for u in users)
    ads = sum(any(s for _, s in lists[True][u]) for u in users)
    print(f"over HTTP, {len(users)} users x {passes} passes each: retail media off p50 {f50:.2f} ms, p99 {f99:.2f} ms;"
          f" on p50 {n50:.2f} ms, p99 {n99:.2f} ms")
    print(f"  added: p50 {n50 - f50:+.2f} ms, p99 {n99 - f99:+.2f} ms (noisy: the in-process numbers are the "
          f"measure); lists with ads {ads}/{len(users)}, organic kept {kept}/{len(users)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--line-items", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--embed-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    tmp = None
    if args.keep is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
    else:
        root = args.keep
    settings = Settings(data_dir=(root / "var").resolve(), embed_model=args.embed_model)
    key = prepare(settings, args)
    with cdp_session(settings) as store:
        users = sorted({e["user_id"] for batch in store.read_changes(TENANT, "events") for e in batch})
    users = users[:args.requests]
    in_process(settings, users)
    over_http(settings, key, users[:500], args.passes)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
