"""What experiment assignment costs a request: the variant and its configuration, side by side with
the same call for a tenant that runs no experiment.

    .venv/bin/python bench/experiments.py [--calls 20000]

In process, through ``serving.experiments.TenantExperiments.apply`` (what every recommendation,
similar-items, session and search request calls): tenant ``plain`` runs no experiment; tenant
``tested`` runs two (in two layers, one with a rule overlay, one with a ranking overlay, 50/50),
so each call hashes the unit twice, picks the variants and finds their configuration in the cache.
Units are distinct user ids. Prints p50 and p99 of each and the difference; the goal is under
0.1 ms at p50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lodestar.cdp import open_cdp  # noqa: E402
from lodestar.experiments import lifecycle  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from lodestar.tenant_config import effective_config  # noqa: E402
from serving.experiments import TenantExperiments  # noqa: E402

RULE = {"rules": [{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.3}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_cdp(Settings(data_dir=Path(tmp)))
        for tenant in ("plain", "tested"):
            store.create_tenant(tenant)
        for name, layer, overlay in (("rules", "a", RULE), ("weights", "b", {"ranking": {"content": 0.4}})):
            lifecycle.create(store, "tested", {"name": name, "layer": layer, "variants": [
                {"name": "control"}, {"name": "treatment", "overlay": overlay}]}, "bench")
        experiments = TenantExperiments(store, refresh_s=3600)
        config = effective_config({})
        times: dict[str, list[float]] = {"plain": [], "tested": []}
        in_experiments = 0
        for n in range(args.calls):
            unit = f"user-{n}"
            for tenant in ("plain", "tested") if n % 2 else ("tested", "plain"):
                started = time.perf_counter()
                _, assigned = experiments.apply(tenant, "recommendations", unit, config)
                times[tenant].append(time.perf_counter() - started)
                in_experiments += len(assigned)
        store.close()
    p = {t: (np.percentile(v, 50) * 1e3, np.percentile(v, 99) * 1e3) for t, v in times.items()}
    print(f"{args.calls} calls each, distinct users; tenant 'tested' runs 2 experiments ({in_experiments} assignments)")
    print(f"no experiment (baseline): p50 {p['plain'][0]:.4f} ms, p99 {p['plain'][1]:.4f} ms")
    print(f"two experiments:          p50 {p['tested'][0]:.4f} ms, p99 {p['tested'][1]:.4f} ms")
    added = p["tested"][0] - p["plain"][0]
    print(f"added at p50: {added:.4f} ms (goal < 0.1 ms): {'ok' if added < 0.1 else 'OVER'}")


if __name__ == "__main__":
    main()
