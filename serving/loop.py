"""Where the blocking work of the hottest requests runs: on the event loop's own thread when
everything they read is in this process, in a worker thread when some of it is across a network.

A sync guard or handler runs in a worker thread (Litestar's ``sync_to_thread``), which lets the
event loop serve other connections while the thread waits. That only pays when the thread *waits*
with the interpreter lock released: on the network (ArangoDB, a Qdrant server, a shared rate-limit
store) or on a disk write. What a recommendation reads from the embedded stores does not wait, and
does not let go of the lock: SQLite's reads of a user's mark and events take microseconds, and a
Qdrant Edge query holds the lock throughout (with a thread querying in a loop, the event loop's
thread got through 8% of the Python it did alone; a ``/tmp`` script on the MovieLens index). There
the hop costs without buying anything: 100-150 µs of CPU for each call sent to the thread and
answered back (``loop.run_in_executor`` and its wake-ups, measured in a bare uvloop), twice per
request (the guard, then the handler). Run on the loop's thread instead, MovieLens' repeated
recommendations (each answered from the user's kept ranking) took 1.07-1.36 ms of server CPU
against 1.47-1.69, and their p99 over one kept-alive connection read 1.6-2.0 ms against 3.7-3.9
(three interleaved rounds of each, a ``/tmp`` script); README, Benchmarks, has the benches.

Writes (events, imports, keys) stay in worker threads: a commit waits on the disk. So do a
tenant's page-view reads while retail media is on (its market's first build per version reads
the charges in full and may commit the bidder's report) and every one before the embedding model
has loaded (a user known only by their profile would wait on the load's lock):
``serving.controllers._on_the_loop``. Search keeps its thread: its query's embedding lets the
lock go.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from litestar.concurrency import sync_to_thread

from lodestar.settings import Settings

T = TypeVar("T")


def reads_in_process(settings: Settings, shared_rates: bool) -> bool:
    """Whether what a read request needs is all in this process: the SQLite CDP (no
    ``LODESTAR_ARANGO_URL``), Qdrant Edge indexes (no ``LODESTAR_QDRANT_URL``) and request rates
    counted in memory (no shared ``LODESTAR_RATE_LIMIT_STORAGE``)."""
    return not settings.arango_url and not settings.qdrant_url and not shared_rates


async def run_blocking(in_process: bool, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``: on this thread (the event loop's) when ``in_process``
    (:func:`reads_in_process`), else in a worker thread, as Litestar runs a sync handler."""
    if in_process:
        return fn(*args, **kwargs)
    return await sync_to_thread(fn, *args, **kwargs)
