"""What explanations cost: recommendations with ``explain`` off and on, side by side in one run.

    .venv/bin/python bench/explain.py [--rounds 3]

On the demo shop (2,400 items, 600 users, materialized through Dagster into a temporary data dir),
with a boost rule and a pin in the tenant's configuration, every user's recommendations (k=10) are
computed in process, the way the API computes them (CDP history, fold-in, index, re-rank, rules),
alternating between no trace (``explain`` off: the default) and a trace turned into each item's
explanation (``explain=true``). Prints p50 and p99 of both and their ratios. Off, the ranking code
runs the same statements as before explanations existed plus one ``trace is None`` test per stage,
so the ratio is what turning explanations on costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lodestar import demo  # noqa: E402
from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.embed import Embedder  # noqa: E402
from lodestar.explain import Trace  # noqa: E402
from lodestar.importer import import_files  # noqa: E402
from lodestar.index import open_index_store  # noqa: E402
from lodestar.recommend import recommend_for_user  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from lodestar.tenant_config import effective_config  # noqa: E402

RULES = [{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.3},
         {"type": "pin", "item_id": "p00007", "position": 3}]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over every user, each mode in turn")
    args = parser.parse_args()
    from pipelines.run import materialize_in_process

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "var")
        store = open_cdp(settings)
        store.create_tenant("shop")
        files = demo.write_demo(Path(tmp) / "input", "shop")
        import_files(store, settings, "shop", files)
        assert materialize_in_process(str(settings.data_dir), "shop", log_level="WARNING").success
        published = open_index_store(settings).open_published("shop")
        config = effective_config({"rules": RULES})
        embedder = Embedder(settings.embed_model, settings.cache_dir, backend=settings.embed_backend,
                            models_dir=settings.models_dir)
        users = [json.loads(line)["id"] for line in files["users"].read_text().splitlines()]
        times: dict[str, list[float]] = {"off": [], "on": []}
        rules_fired = 0
        for _ in range(args.rounds):
            for user in users:
                for mode in ("off", "on") if len(times["off"]) % 2 == 0 else ("on", "off"):
                    started = time.perf_counter()
                    trace = Trace() if mode == "on" else None
                    result = recommend_for_user(published, store, embedder, "shop", user, 10, config, trace=trace)
                    if trace is not None:
                        explained = [trace.explanation(h.item_id) for h in result.items]
                        rules_fired += sum(len(e["rules"]) for e in explained)
                    times[mode].append(time.perf_counter() - started)
        store.close()
        published.close()
    off, on = times["off"], times["on"]
    print(f"{len(users)} users x {args.rounds} rounds, k=10, a boost rule and a pin ({rules_fired} rule effects explained)")
    print(f"explain off (default): p50 {pct(off, 50):.2f} ms, p99 {pct(off, 99):.2f} ms")
    print(f"explain on:            p50 {pct(on, 50):.2f} ms, p99 {pct(on, 99):.2f} ms")
    print(f"on / off: p50 {pct(on, 50) / pct(off, 50):.3f}, p99 {pct(on, 99) / pct(off, 99):.3f}")


if __name__ == "__main__":
    main()
