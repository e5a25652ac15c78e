"""A log of every list the API serves, for attribution, written off the request path.

Rows are queued and written to the CDP store in batches by one background thread (every half
second, and at shutdown). A crash loses at most the last half second of the log: acceptable for
analytics, which is why events, unlike this log, are written before the response.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from typing import Any

from lodestar.cdp import CdpStore

log = logging.getLogger("lodestar.serving")


class ServedLog:
    def __init__(self, store: CdpStore, interval_s: float = 0.5) -> None:
        self._store = store
        self._interval = interval_s
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._ads: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-log", daemon=True)
        self._thread.start()

    def record(self, tenant: str, row: dict[str, Any]) -> None:
        self._queue.put((tenant, {**row, "ts": time.time()}))

    def record_ads(self, tenant: str, rows: list[dict[str, Any]]) -> None:
        """Ads served to a known user and ghosts (lodestar.ads.incrementality), each with its ``ts``."""
        for row in rows:
            self._ads.put((tenant, row))

    def flush(self) -> None:
        for source, write in ((self._queue, self._store.log_served), (self._ads, self._store.log_ad_serves)):
            batches: dict[str, list[dict[str, Any]]] = defaultdict(list)
            while True:
                try:
                    tenant, row = source.get_nowait()
                except queue.Empty:
                    break
                batches[tenant].append(row)
            for tenant, rows in batches.items():
                try:
                    write(tenant, rows)
                except Exception:  # noqa: BLE001 - the log must never take the API down
                    log.exception("could not write %d served rows of tenant %s", len(rows), tenant)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
