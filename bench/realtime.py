"""Real-time personalization and the cost of query controls, measured over HTTP.

    .venv/bin/python bench/realtime.py [--trials 100] [--requests 200]

Two `lodestar serve` processes share one data dir (the demo shop tenant, 2,400 products):
  * event to reflection: a new user's purchases are POSTed to server A; server B is then asked for
    the user's recommendations until the answer reflects them (strategy no longer `popular` and the
    purchased items excluded). Prints p50 and p95 from the accepted POST to that answer
    (goal: p95 under 100 ms), and the POST latency itself.
  * controls: recommendation latency with a price-range filter and diversity 0.5 vs the same
    requests without (interleaved), as a ratio of p50s (goal: at most 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_server, stop  # noqa: E402
from lodestar import demo  # noqa: E402
from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.keys import issue_key  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from pipelines.run import materialize_in_process  # noqa: E402


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "var")
        store = open_cdp(settings)
        store.create_tenant("shop")
        key = issue_key(store, "shop")
        files = demo.write_demo(Path(tmp) / "input", "shop")
        import_files(store, settings, "shop", files)
        items = [json.loads(line) for line in files["items"].read_text().splitlines()]
        by_category: dict[str, list[str]] = {}
        for item in items:
            if item["available"]:
                by_category.setdefault(item["categories"][0], []).append(item["id"])
        store.close()
        assert materialize_in_process(str(settings.data_dir), "shop").success
        env = dict(os.environ, LODESTAR_DATA_DIR=str(settings.data_dir))
        (a, client_a), (b, client_b) = start_server(env), start_server(env)
        headers = {"Authorization": f"Bearer {key}"}
        try:
            reflect, posts, gets_needed = [], [], []
            categories = sorted(by_category)
            for trial in range(args.trials):
                user = f"bench-{trial}"
                picks = list(rng.choice(by_category[categories[trial % len(categories)]], size=3, replace=False))
                events = [{"user_id": user, "item_id": str(i), "type": "purchase"} for i in picks]
                started = time.perf_counter()
                response = client_a.post("/v1/events", json={"events": events}, headers=headers)
                accepted = time.perf_counter()
                assert response.status_code == 200 and response.json()["accepted"] == 3
                gets = 0
                while True:
                    gets += 1
                    body = client_b.get(f"/v1/users/{user}/recommendations?k=10", headers=headers).json()
                    if body["strategy"] != "popular" and not set(picks) & {i["id"] for i in body["items"]}:
                        break
                reflect.append(time.perf_counter() - accepted)
                posts.append(accepted - started)
                gets_needed.append(gets)
            users = [f"u{rng.integers(600):04d}" for _ in range(args.requests)]
            controls = "&filter=" + json.dumps({"attributes": {"price": {"gte": 10, "lte": 100}}}) + "&diversity=0.5"
            plain, controlled = [], []
            for user in users:
                for extra, sink in (("", plain), (controls, controlled)):
                    started = time.perf_counter()
                    response = client_b.get(f"/v1/users/{user}/recommendations?k=10{extra}", headers=headers)
                    sink.append(time.perf_counter() - started)
                    assert response.status_code == 200
        finally:
            stop(a)
            stop(b)
    print(f"event to reflected recommendation ({args.trials} trials, POST to server A, GET from server B): "
          f"p50 {pct(reflect, 50):.1f} ms, p95 {pct(reflect, 95):.1f} ms (goal p95 < 100 ms); "
          f"GETs needed: max {max(gets_needed)}")
    print(f"POST /v1/events (3 events, durable): p50 {pct(posts, 50):.1f} ms, p95 {pct(posts, 95):.1f} ms")
    print(f"recommendations without controls ({args.requests}): p50 {pct(plain, 50):.1f} ms, p95 {pct(plain, 95):.1f} ms")
    print(f"with price filter + diversity 0.5:        p50 {pct(controlled, 50):.1f} ms, p95 {pct(controlled, 95):.1f} ms")
    print(f"controls / plain (p50) = {np.median(controlled) / np.median(plain):.2f} (goal <= 1.5)")


if __name__ == "__main__":
    main()
