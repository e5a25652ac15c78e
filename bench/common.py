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


class KeepAliveClient:
    """A lean HTTP/1.1 keep-alive client for load generators: one socket, a request written as
    bytes, the response read by its ``Content-Length``. It costs the machine about a tenth of the
    CPU per request that an ``httpx.Client`` does (0.04-0.06 ms against 0.54-0.80 ms, the two
    measured side by side on the throughput bench), so on a 2-core machine the server, not the client, is what a load
    measures. Only what a load needs: GET, responses with a length (not chunked), no redirects."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
        self._address = (host, port)
        self._timeout = timeout
        self._extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        self._socket: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> socket.socket:
        if self._socket is None:
            self._socket = socket.create_connection(self._address, timeout=self._timeout)
            self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = b""
        return self._socket

    def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: (status, body)."""
        sock = self._connect()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {self._address[0]}\r\n{self._extra}\r\n".encode())
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            self._buffer += self._recv(sock)
        head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if "content-length" not in fields:
            raise RuntimeError(f"GET {path}: a response without Content-Length ({fields.get('transfer-encoding')})")
        length = int(fields["content-length"])
        while len(self._buffer) < length:
            self._buffer += self._recv(sock)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-response")
        return chunk

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


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
