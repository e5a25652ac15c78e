"""Benchmark the spine on the demo shop tenant, against named baselines run in the same process.

    .venv/bin/python bench/spine.py [--items 2400] [--users 600] [--requests 300]

Prints:
  * materialization through Dagster, cold vs. re-run with unchanged data (baseline: the cold run);
    the re-run reuses every embedding from the content-hash cache;
  * the recommendation request path (Litestar test client: auth, CDP read, fold-in, Qdrant
    candidates, exact re-rank) vs. the baseline "exact NumPy brute force": the same user's
    collaborative score computed for every item of the catalog with the same model, no HTTP.
Ratios, not absolute seconds, are what to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lodestar import demo  # noqa: E402
from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.collab import event_item_weights  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.index import open_index_store  # noqa: E402
from lodestar.keys import issue_key  # noqa: E402
from lodestar.recommend import interacted_items  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from lodestar.tenant_config import effective_config  # noqa: E402


def materialize(settings: Settings, tenant: str) -> float:
    from pipelines.run import materialize_in_process

    started = time.perf_counter()
    assert materialize_in_process(str(settings.data_dir), tenant).success
    return time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2400)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "var")
        store = open_cdp(settings)
        store.create_tenant("shop")
        key = issue_key(store, "shop")
        files = demo.write_demo(Path(tmp) / "input", "shop", n_items=args.items, n_users=args.users)
        import_files(store, settings, "shop", files)

        cold = materialize(settings, "shop")
        warm = materialize(settings, "shop")
        print(f"materialize shop ({args.items} items): cold {cold:.1f}s, re-run {warm:.1f}s, "
              f"re-run / cold = {warm / cold:.2f}")

        from litestar.testing import TestClient

        from serving.app import create_app

        rng = np.random.default_rng(0)
        users = [f"u{rng.integers(args.users):04d}" for _ in range(args.requests)]
        model = open_index_store(settings).open_published("shop").model
        config = effective_config(None)

        api: list[float] = []
        with TestClient(create_app(settings)) as client:
            headers = {"Authorization": f"Bearer {key}"}
            client.get(f"/v1/users/{users[0]}/recommendations", headers=headers)  # load the index
            for user in users:
                started = time.perf_counter()
                response = client.get(f"/v1/users/{user}/recommendations?k=10", headers=headers)
                api.append(time.perf_counter() - started)
                assert response.status_code == 200

        brute: list[float] = []
        for user in users:
            started = time.perf_counter()
            events = store.user_events("shop", user, limit=5000)
            seen = [model.index[i] for i in interacted_items(events) if i in model.index]
            idx, w = model.user_profile(event_item_weights(events, config))
            scores = w @ np.asarray(model.ease[idx])  # every item of the catalog
            scores[seen] = -np.inf
            np.argpartition(-scores, 10)[:10]
            brute.append(time.perf_counter() - started)
        store.close()

    print(f"recommendations ({args.requests} requests): API p50 {pct(api, 50):.2f} ms, p95 {pct(api, 95):.2f} ms")
    print(f"baseline exact NumPy brute force:  p50 {pct(brute, 50):.2f} ms, p95 {pct(brute, 95):.2f} ms")
    print(f"API / brute force (p50) = {statistics.median(api) / statistics.median(brute):.2f}")


if __name__ == "__main__":
    main()
