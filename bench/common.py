"""What the benchmarks share: a real `lodestar serve` process on a free port."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from scipy import stats

from lodestar.cdp import cdp_session
from lodestar.collab import event_item_weights
from lodestar.index import open_index_store
from lodestar.recommend import HISTORY_LIMIT, interacted_items, user_taste
from lodestar.settings import Settings
from lodestar.tenant_config import TenantConfig


def engine_queries(settings: Settings, tenant: str, users: list[str]) -> list[tuple[str, np.ndarray, np.ndarray | None, list[str]]]:
    """What the raw-engine baselines send the index per user, computed as the API computes it
    (lodestar.recommend): (user, collaborative query vector, taste vector, items to exclude), for
    the users with a collaborative query."""
    config = TenantConfig()
    published = open_index_store(settings).open_published(tenant)
    out = []
    with cdp_session(settings) as store:
        for user in users:
            events = store.user_events(tenant, user, limit=HISTORY_LIMIT)
            query = published.model.query_vector(event_item_weights(events, config)) if events else None
            if query is not None:
                out.append((user, query, user_taste(published.reader, events, config), sorted(interacted_items(events))))
    published.close()
    return out


_NONCES = itertools.count()  # next() on a count is atomic: client threads may share it


def anew_exclusion() -> str:
    """A query-string exclusion of an id no catalog holds, new each call: a recommendation asked
    with it gives the same answer but matches no kept ranking (lodestar/user_state.py), so it ranks
    again, and builds its exclusions' engine condition again, as a user's request after their new
    event does."""
    return f"&exclude=bench-{next(_NONCES)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], headers: dict[str, str] | None = None,
                 timeout_s: float = 120, args: list[str] | None = None) -> tuple[subprocess.Popen, httpx.Client]:
    """Start `lodestar serve` with ``env`` (and extra ``args``, e.g. ``--workers 2``) and return it
    with a client, once /ready answers 200."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lodestar.cli", "serve", "--port", str(port), *(args or [])],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers or {})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/ready").status_code == 200:
                return process, client
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise SystemExit("lodestar serve did not become ready")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def percentile_ratio(treated: list[list[float]], baseline: list[list[float]], q: float = 99,
                     confidence: float = 0.95) -> tuple[float, float, float]:
    """The ``q``-th percentile of ``treated``'s timings over ``baseline``'s, and its bootstrap
    confidence interval (scipy.stats.bootstrap, percentile method, 2,000 resamples, seeded): each
    argument is a list of rounds' timings, paired by position (round k of one ran beside round k of
    the other), and the rounds are resampled, not single requests, because a shared machine's noise
    comes in spells of seconds that slow whole stretches. Rounds empty on either side are left out."""
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(treated, baseline, strict=True) if len(a) and len(b)]
    if not pairs:
        raise ValueError("no round has timings on both sides")

    def ratio(rounds: np.ndarray) -> float:
        picked = [pairs[int(i)] for i in rounds]
        return float(np.percentile(np.concatenate([a for a, _ in picked]), q)
                     / np.percentile(np.concatenate([b for _, b in picked]), q))

    point = ratio(np.arange(len(pairs)))
    if len(pairs) < 2:
        return point, float("nan"), float("nan")
    interval = stats.bootstrap((np.arange(len(pairs)),), ratio, vectorized=False, method="percentile",
                               n_resamples=2000, confidence_level=confidence, random_state=0).confidence_interval
    return point, float(interval.low), float(interval.high)
