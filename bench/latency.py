"""Latency at the floor: every MovieLens user's recommendation against what the engine and HTTP cost.

    .venv/bin/python bench/latency.py [DIR] [--embed-model all-MiniLM-L6-v2] [--data-dir D]

DIR defaults to ../shared/data/movielens-small. The tenant is imported as a new user would
(`import_movielens`, what `lodestar cdp import --format movielens` runs) and materialized through
Dagster (reused when ``--data-dir`` already holds it); then, all in this run, on one machine:

  * "HTTP floor": ``GET /health`` of the same server, over one kept-alive connection;
  * "raw engine": per user, the index work one recommendation needs, in process, no HTTP: the 300
    nearest collaborative vectors and the 10 nearest content vectors to the user's query vectors,
    excluding the user's items (query vectors and the engine's filter objects built beforehand);
  * the service: ``GET /v1/users/{id}/recommendations?k=10`` for every user in turn over one
    kept-alive connection (one warm-up pass, then the measured pass), by two servers in turn: one
    keeping what each user's history derives to between their requests (the default:
    lodestar/user_state.py), measured twice: "rankings kept" repeats the warm-up pass's requests,
    so each answer is the kept state's kept ranking (its items' points read again, no index query),
    as for a user asking again with nothing new; "states kept, ranked anew" follows a warm-up
    asking k=11, so each request ranks again from the kept state; "states kept, after a new event"
    sends each user a new event (a view of a popular item, through ``POST /v1/events``, not timed)
    before their request, which adds it to their kept state and ranks anew (with ``--data-dir`` the
    tenant keeps those events: each run adds one per user and mode); and one server keeping nothing
    (``LODESTAR_USER_STATE_MB=0``: every request reads and derives, as a first request, or the
    first after a new event of the user's, does);

each with and without a category filter. Issue 12's bar, printed as a ratio (<= 1 meets it):
service p99 <= 1.5 x raw engine p99 + HTTP floor p99.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import qdrant_edge as qe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import engine_queries, start_server, stop  # noqa: E402
from lodestar.cdp import cdp_session  # noqa: E402
from lodestar.filters import ItemFilter  # noqa: E402
from lodestar.importer import import_movielens  # noqa: E402
from lodestar.index import COLLAB, CONTENT, open_index_store  # noqa: E402
from lodestar.keys import issue_key  # noqa: E402
from lodestar.settings import Settings  # noqa: E402
from pipelines.run import materialize_in_process  # noqa: E402

TENANT = "ml"
CATEGORY = "Drama"  # the most common MovieLens genre: the filter keeps about half the catalog


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.max())


def raw_engine(settings: Settings, queries, item_filter: ItemFilter | None) -> list[float]:
    """Per user: the two index queries of a recommendation, timed alone (best of two passes each)."""
    reader = open_index_store(settings).open_published(TENANT).reader
    prepared = [(q, taste, reader._filter(exclude, item_filter)) for _u, q, taste, exclude in queries]

    def one(vector: np.ndarray, k: int, using: str, engine_filter) -> None:
        reader._shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(vector.tolist(), using=using),
                                            filter=engine_filter, with_payload=False, with_vector=False))

    times: list[list[float]] = [[], []]
    for attempt in range(2):
        for query, taste, engine_filter in prepared:
            started = time.perf_counter()
            one(query, 300, COLLAB, engine_filter)
            if taste is not None:
                one(taste, 10, CONTENT, engine_filter)
            times[attempt].append(time.perf_counter() - started)
    reader.close()
    return [min(a, b) for a, b in zip(*times, strict=True)]


def service(http, users: list[str], query: str, warm_k: int = 10) -> list[float]:
    """One warm-up pass over every user (asking ``warm_k`` items), then the measured one (k=10)."""
    times: list[float] = []
    for measured in (False, True):
        for user in users:
            started = time.perf_counter()
            response = http.get(f"/v1/users/{user}/recommendations?k={10 if measured else warm_k}{query}")
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise SystemExit(f"user {user}: {response.status_code} {response.text}")
            if measured:
                times.append(elapsed)
    return times


def service_after_event(http, users: list[str], query: str, items: list[str]) -> list[float]:
    """Per user, one new event of theirs (a view of one of ``items``, sent through the API, not
    timed), then their recommendation (k=10, timed): the request that follows each of a user's
    events, their state kept from before it."""
    times: list[float] = []
    for n, user in enumerate(users):
        sent = http.post("/v1/events", json={"events": [{"user_id": user, "item_id": items[n % len(items)],
                                                         "type": "view", "ts": time.time()}]})
        if sent.status_code != 200 or sent.json().get("rejected"):
            raise SystemExit(f"user {user}'s event: {sent.status_code} {sent.text}")
        started = time.perf_counter()
        response = http.get(f"/v1/users/{user}/recommendations?k=10{query}")
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise SystemExit(f"user {user}: {response.status_code} {response.text}")
        times.append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", default=str(ROOT.parent / "shared" / "data" / "movielens-small"))
    parser.add_argument("--embed-model", default=os.environ.get("LODESTAR_EMBED_MODEL", "all-MiniLM-L6-v2"))
    parser.add_argument("--data-dir", help="keep the materialized tenant here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "var"
        settings = Settings(data_dir=data_dir, embed_model=args.embed_model)
        os.environ.update(LODESTAR_EMBED_MODEL=args.embed_model)
        with cdp_session(settings) as store:
            fresh = store.get_tenant(TENANT) is None
            if fresh:
                store.create_tenant(TENANT)
                import_movielens(store, settings, TENANT, Path(args.directory))
            key = issue_key(store, TENANT, ("read", "events"))
        if fresh or open_index_store(settings).published(TENANT) is None:
            started = time.perf_counter()
            assert materialize_in_process(str(data_dir), TENANT, log_level="WARNING").success
            print(f"materialized MovieLens in {time.perf_counter() - started:.0f}s ({args.embed_model})", flush=True)
        users = [str(u) for u in sorted(pd.read_csv(Path(args.directory) / "ratings.csv", usecols=["userId"])["userId"].unique())]
        queries = engine_queries(settings, TENANT, users)
        published = open_index_store(settings).open_published(TENANT)
        popular = [hit.item_id for hit in published.reader.popular(100)]  # what the new events view
        published.close()
        drama = ItemFilter(categories=(CATEGORY,))
        filter_query = "&filter=" + urllib.parse.quote(json.dumps({"categories": [CATEGORY]}))

        env = {**os.environ, "LODESTAR_DATA_DIR": str(data_dir), "LODESTAR_EMBED_MODEL": args.embed_model}
        # Two servers, one after the other: users' derived states kept between their requests (the
        # default), and not kept (LODESTAR_USER_STATE_MB=0: every request reads and derives). The
        # first is measured twice: repeating the warm-up pass's requests (a kept state's ranking is
        # kept too: nothing is ranked again), and after a warm-up asking k=11 (the states kept, each
        # request ranked anew, as after another request of the user's), and then, each request
        # after a new event of the user's (sent through the API: the tenant keeps those events).
        servers = (("", {}, ((", rankings kept", 10), (", states kept, ranked anew", 11),
                             (", states kept, after a new event", None))),
                   (", states not kept", {"LODESTAR_USER_STATE_MB": "0"}, (("", 10),)))
        print(f"{len(users)} users ({len(queries)} with a collaborative query), k=10, one kept-alive connection")
        print("| what | p50 ms | p99 ms | max ms | bar (1.5 x engine p99 + floor p99) | p99 / bar |")
        print("|---|---|---|---|---|---|")
        modes = (("", None, ""), (f" with filter {CATEGORY}", drama, filter_query))
        engines = {name: percentiles(raw_engine(settings, queries, item_filter)) for name, item_filter, _q in modes}
        for name, _f, _q in modes:
            engine = engines[name]
            print(f"| raw engine{name} (collab top-300 + content top-10, in process) | {engine[0]:.2f} | "
                  f"{engine[1]:.2f} | {engine[2]:.2f} | | |")
        for label, extra, passes in servers:
            process, http = start_server({**env, **extra}, headers={"Authorization": f"Bearer {key}"})
            try:
                for _ in range(2):  # warm-up, then measured
                    floor = []
                    for _n in users:
                        started = time.perf_counter()
                        http.get("/health")
                        floor.append(time.perf_counter() - started)
                floor_p = percentiles(floor)
                print(f"| HTTP floor (`GET /health`){label} | {floor_p[0]:.2f} | {floor_p[1]:.2f} | {floor_p[2]:.2f} | | |")
                for kept, warm_k in passes:
                    for name, _item_filter, query in modes:
                        engine = engines[name]
                        if warm_k is None:
                            served = percentiles(service_after_event(http, users, query, popular))
                        else:
                            served = percentiles(service(http, users, query, warm_k))
                        bar = 1.5 * engine[1] + floor_p[1]
                        print(f"| `GET .../recommendations?k=10`{name}{label}{kept} | {served[0]:.2f} | "
                              f"{served[1]:.2f} | {served[2]:.2f} | {bar:.2f} | {served[1] / bar:.2f} |", flush=True)
            finally:
                http.close()
                stop(process)


if __name__ == "__main__":
    main()
