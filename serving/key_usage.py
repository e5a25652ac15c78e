"""When each API key was last used, for the console's key list: remembered in memory per request
and written to the CDP store in one batch every ``interval_s`` (and at shutdown), so that a request
costs a dictionary write, not a database write. "Last used" is right to within that interval."""

from __future__ import annotations

import logging
import threading
import time

from lodestar.cdp import CdpStore

log = logging.getLogger("lodestar.serving")


class KeyUsage:
    def __init__(self, store: CdpStore, interval_s: float = 30.0) -> None:
        self._store = store
        self._interval = interval_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="key-usage", daemon=True)
        self._thread.start()

    def seen(self, key_id: str) -> None:
        with self._lock:
            self._seen[key_id] = time.time()

    def flush(self) -> None:
        with self._lock:
            seen, self._seen = self._seen, {}
        try:
            self._store.touch_api_keys(seen)
        except Exception:  # noqa: BLE001 - a statistic must never take the API down
            log.exception("could not record the last use of %d API keys", len(seen))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()
