"""A flooding API client for the noisy-neighbour measurement of bench/tenants.py, as a light process
of its own (the standard library's HTTP client, nothing of Lodestar imported), so that the flood's
own cost on the machine is small and its start does not land inside the measured stretch.

    python bench/flood.py BASE_URL KEY RATE SECONDS [THREADS] [USER ...]

Sends RATE requests per second in all (``GET /v1/users/{user}/recommendations?k=10``, paced, over
THREADS keep-alive connections) for SECONDS, after printing ``ready``; then prints the count of
each status code as JSON.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
import urllib.parse
from collections import Counter


def main() -> None:
    base, key, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    users = sys.argv[6:] or ["u00"]
    url = urllib.parse.urlsplit(base)
    counts: Counter[int] = Counter()
    lock = threading.Lock()
    print("ready", flush=True)
    deadline = time.monotonic() + seconds

    def run(worker: int) -> None:
        gap, mine = threads / rate, Counter()
        next_at = time.monotonic() + worker * gap / threads
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {"Authorization": f"Bearer {key}"}
        n = worker
        while (now := time.monotonic()) < deadline:
            if now < next_at:
                time.sleep(next_at - now)
            next_at += gap
            connection.request("GET", f"/v1/users/{users[n % len(users)]}/recommendations?k=10", headers=headers)
            response = connection.getresponse()
            response.read()
            mine[response.status] += 1
            n += threads
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
