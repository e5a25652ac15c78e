"""A flooding API client for the noisy-neighbour measurement of bench/tenants.py, as a light process
of its own (the standard library's HTTP client, nothing of Lodestar imported), so that the flood's
own cost on the machine is small.

    python bench/flood.py BASE_URL KEY RATE ON_S OFF_S ROUNDS [THREADS] [USER ...]

Opens THREADS keep-alive connections, prints ``ready START`` (START: the ``time.monotonic()`` at
which the first stretch of flood begins; on Linux that clock is the machine's, the same in every
process), then ROUNDS times: sends RATE requests per second in all for ON_S seconds
(``GET /v1/users/{user}/recommendations?k=10&exclude=flood-N``, paced; the exclusion of an
unknown id, new each request, makes every admitted request rank anew), then nothing for OFF_S
seconds. Last, it prints the count of each status code as JSON. One process floods and pauses in turn, so that the
stretches with and without the flood alternate every few seconds, with no process start in them,
and a shared machine's drifting noise falls on both sides alike.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter

LEAD_S = 1.0  # from ``ready`` to the first stretch: the connections are open by then


def main() -> None:
    base, key, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
    on_s, off_s, rounds = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    threads = int(sys.argv[7]) if len(sys.argv) > 7 else 8
    users = sys.argv[8:] or ["u00"]
    url = urllib.parse.urlsplit(base)
    counts: Counter[int | str] = Counter()
    lock = threading.Lock()
    start = time.monotonic() + LEAD_S
    print(f"ready {start!r}", flush=True)

    def run(worker: int) -> None:
        gap, mine = threads / rate, Counter()
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        connection.connect()
        headers = {"Authorization": f"Bearer {key}"}
        n = worker
        try:
            for k in range(rounds):
                began = start + k * (on_s + off_s)
                next_at, ends = began + worker * gap / threads, began + on_s
                while True:
                    now = time.monotonic()
                    if next_at >= ends or now >= ends:  # a thread behind its pace stops at the end too
                        break
                    if now < next_at:
                        time.sleep(next_at - now)
                    next_at += gap
                    # An exclusion of an unknown id, new each request: an admitted request ranks
                    # anew (the costlier kind) instead of reading the user's kept ranking.
                    path = f"/v1/users/{users[n % len(users)]}/recommendations?k=10&exclude=flood-{n}"
                    n += threads
                    try:
                        connection.request("GET", path, headers=headers)
                        response = connection.getresponse()
                        response.read()
                    except (http.client.HTTPException, OSError):  # e.g. closed while idle between stretches
                        connection.close()  # reopened by the next request
                        mine["error"] += 1
                        continue
                    mine[response.status] += 1
        finally:
            connection.close()
            with lock:
                counts.update(mine)

    pool = [threading.Thread(target=run, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print(json.dumps({str(k): v for k, v in sorted(counts.items())}), flush=True)


if __name__ == "__main__":
    main()
