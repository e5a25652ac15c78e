"""How much one request may send, and how many requests the API works on at once.

The HTTP server (:mod:`serving.server`) bounds what is read before the app sees a request: the
size and the time of the request head, idle keep-alive connections, open connections. This module
bounds the rest, inside the app:

- the body: its size and the time it takes to arrive. It is read *before* the request takes a
  slot, so that slow uploads cannot hold the slots that the work needs;
- the work in flight: at most ``max_in_flight`` requests run at once and at most ``max_waiting``
  more wait, each for at most ``max_wait_s``, for a slot. Past that a request is answered at once
  with 503 and ``Retry-After``: with two cores, more requests in flight only share the same CPU
  more thinly (throughput falls and every latency grows), while a bounded queue keeps the tail
  latency near ``max_wait_s`` plus one request's work, and tells clients when to come back.

``/health``, ``/ready`` and ``/metrics`` bypass the slots: probes and scrapes must answer, and say
what is going on, exactly when the API is overloaded.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
from litestar.config.app import AppConfig
from litestar.connection import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge

from lodestar.errors import InvalidInput
from serving.errors import PROBLEM, problem
from serving.observability import log_request, request_id, request_id_from
from serving.quotas import SLOT, RequestRates

# Paths that never wait for a slot and never have a body worth bounding here.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})

SHED = Counter("lodestar_requests_shed_total",
               "Requests refused by a limit before any work: overloaded (503), body_too_large (413), body_timeout (408)",
               ["reason"])
WAITING = Gauge("lodestar_requests_waiting", "Requests waiting for a slot (at most LODESTAR_MAX_WAITING)")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RequestLimits:
    """Every limit on a request, read from ``LODESTAR_*`` variables by :meth:`from_env`."""

    max_header_bytes: int = 32 * 1024  # request line and headers together
    header_timeout_s: float = 10.0  # from a request's first byte (or the connection) to its last header
    keep_alive_s: int = 5  # an idle keep-alive connection is closed after this
    # Open connections (and tasks) before the server answers 503 itself. Bodies are read before a
    # slot is taken, so this times max_body_bytes bounds the memory that bodies can take.
    max_connections: int = 256
    max_body_bytes: int = 1024 * 1024  # an event batch of 1000 events is well under this
    body_timeout_s: float = 10.0  # for the whole body to arrive
    # Four per core: enough to overlap the I/O of sync handlers (SQLite, index reads); more only
    # share the same cores more thinly.
    max_in_flight: int = field(default_factory=lambda: 4 * _cpus())
    max_waiting: int | None = None  # None: twice max_in_flight
    max_wait_s: float = 1.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.max_waiting is None:
            object.__setattr__(self, "max_waiting", 2 * self.max_in_flight)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestLimits:
        env = os.environ if environ is None else environ
        values: dict[str, int | float] = {}
        for name, (var, kind, minimum) in _ENV.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                value = kind(text)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or value < minimum:
                raise InvalidInput(f"{var} must be a number >= {minimum}, not {text!r}", field=var)
            values[name] = value
        return cls(**values)


# field -> (environment variable, type, smallest value)
_ENV: dict[str, tuple[str, type, float]] = {
    "max_header_bytes": ("LODESTAR_MAX_HEADER_BYTES", int, 1024),
    "header_timeout_s": ("LODESTAR_HEADER_TIMEOUT", float, 0.1),
    "keep_alive_s": ("LODESTAR_KEEP_ALIVE", int, 1),
    "max_connections": ("LODESTAR_MAX_CONNECTIONS", int, 1),
    "max_body_bytes": ("LODESTAR_MAX_BODY_BYTES", int, 1),
    "body_timeout_s": ("LODESTAR_BODY_TIMEOUT", float, 0.1),
    "max_in_flight": ("LODESTAR_MAX_IN_FLIGHT", int, 1),
    "max_waiting": ("LODESTAR_MAX_WAITING", int, 0),
    "max_wait_s": ("LODESTAR_MAX_WAIT", float, 0),
    "retry_after_s": ("LODESTAR_RETRY_AFTER", int, 0),
}


class Slots:
    """At most ``limit`` holders at once; up to ``max_waiting`` more wait, first come first
    served, each for at most ``max_wait_s``. Used from the event loop only, so it needs no lock;
    it keeps no loop-bound object between requests."""

    def __init__(self, limit: int, max_waiting: int, max_wait_s: float) -> None:
        self.limit, self.max_waiting, self.max_wait_s = limit, max_waiting, max_wait_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    async def acquire(self) -> bool:
        """Take a slot (``True``) or give up (``False``): at once when the queue is full, after
        ``max_wait_s`` when no slot freed meanwhile."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return True
        if len(self._waiters) >= self.max_waiting:
            return False
        granted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        timer = asyncio.get_running_loop().call_later(self.max_wait_s, self._give_up, granted)
        WAITING.inc()
        try:
            return await granted
        except asyncio.CancelledError:  # the client went away while waiting
            if granted.done() and not granted.cancelled() and granted.result():
                self.release()  # the slot was handed over just now: pass it on
            else:
                self._forget(granted)
            raise
        finally:
            timer.cancel()
            WAITING.dec()

    def release(self) -> None:
        # A freed slot goes straight to the longest waiter, so in_flight never exceeds limit.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.in_flight -= 1

    def _give_up(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            waiter.set_result(False)
        self._forget(waiter)

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


async def _send_problem(scope: Scope, receive: Receive, send: Send, status: int, title: str, detail: str,
                        headers: dict[str, str], **extra: object) -> None:
    """Answer from a middleware with the same problem details as :mod:`serving.errors`."""
    response = problem(status, title, detail, **extra)
    asgi = response.to_asgi_response(app=None, request=Request(scope, receive), headers=headers)
    await asgi(scope, receive, send)


async def refuse_early(rates: RequestRates, scope: Scope, send: Send) -> bool:
    """The front door (:class:`serving.app.LodestarApp` asks it first): a request whose credential
    is still inside the window of a quota that refused it (:meth:`RequestRates.refused`) is answered
    here, 429 with ``Retry-After`` and the same problem details as the refusal, before the app's
    middleware, routing, the key lookup and the body. Returns whether it answered.

    A flood past its quota is mostly such requests, so this path is kept to its bare bones: the
    body is encoded here, and only the first early refusal of each refusal window writes a request
    log line (noting that the rest are counted, not logged); every one is counted in
    ``lodestar_requests_throttled_total``."""
    if scope["path"] in UNLIMITED_PATHS:
        return False
    refusal, waits_to_send = None, False
    for name, value in scope["headers"]:
        if name == b"authorization":
            refusal = rates.refused(value.decode("latin-1"))
        elif name == b"expect":
            waits_to_send = value.lower() == b"100-continue"
    if refusal is None:
        return False
    exc, first = refusal
    rid = request_id_from(scope)
    body = msgspec.json.encode({"type": "about:blank", "title": "Too many requests", "status": 429,
                                "detail": str(exc), "quota": exc.quota})
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(exc.retry_after_s).encode()), (b"x-request-id", rid.encode())]
    if waits_to_send:  # its body is not read, and may yet come: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    if first:
        token = request_id.set(rid)
        try:
            log_request(scope, 429, None, None, early_refusal=(
                "answered before the app; until this refusal's window frees, the credential's further "
                "requests are answered the same way and counted in lodestar_requests_throttled_total, "
                "not logged"))
        finally:
            request_id.reset(token)
    return True


class _BodyTooLarge(Exception):
    pass


class RequestLimitsMiddleware(ASGIMiddleware):
    """Reads and bounds the body, then runs the request in a slot (503 + Retry-After without one).

    One instance serves every route of an app (Litestar builds each route's stack from it), so
    its :class:`Slots` are shared by all of them: that is the point."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, limits: RequestLimits, rates: RequestRates | None = None) -> None:
        self.limits = limits
        self.rates = rates
        self.slots = Slots(limits.max_in_flight, limits.max_waiting, limits.max_wait_s)
        self.should_bypass_for_scope = lambda scope: scope["path"] in UNLIMITED_PATHS

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        replay = await self._read_body(scope, receive, send)
        if replay is None:
            return  # refused (the answer is sent) or the client left
        if not await self.slots.acquire():
            SHED.labels("overloaded").inc()
            retry = self.limits.retry_after_s
            await _send_problem(
                scope, replay, send, 503, "Overloaded",
                f"the server is at its limit of {self.limits.max_in_flight} requests in flight and "
                f"{self.limits.max_waiting} waiting; retry in {retry} s", {"Retry-After": str(retry)})
            return
        try:
            await next_app(scope, replay, send)
        finally:
            self.slots.release()
            if self.rates is not None and (tenant := scope.get(SLOT)) is not None:
                self.rates.finished(tenant)  # a tenant's concurrency slot (serving.quotas)

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The whole body, bounded in size and time, as a ``receive`` that replays it (``None``
        when the request was refused or the client left)."""
        limit = self.limits.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await self._refuse_too_large(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise _BodyTooLarge
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except _BodyTooLarge:
            return await self._refuse_too_large(scope, receive, send)
        except TimeoutError:
            SHED.labels("body_timeout").inc()
            await _send_problem(scope, receive, send, 408, "Request timeout",
                                f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                                {"Connection": "close"})
            return None
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # what comes after the body: the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    async def _refuse_too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        SHED.labels("body_too_large").inc()
        # Connection: close, so the server does not read the rest of a body nobody wants.
        await _send_problem(scope, receive, send, 413, "Request body too large",
                            f"the request body is larger than {self.limits.max_body_bytes} bytes; "
                            "send less per request (e.g. split the event batch)", {"Connection": "close"})
        return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class RequestLimitsPlugin(InitPluginProtocol):
    """Adds :class:`RequestLimitsMiddleware` and the same body limit in Litestar itself (a second
    line for any route that bypasses the middleware)."""

    def __init__(self, limits: RequestLimits | None = None, rates: RequestRates | None = None) -> None:
        self.limits = limits or RequestLimits.from_env()
        self.middleware = RequestLimitsMiddleware(self.limits, rates)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware.append(self.middleware)
        app_config.request_max_body_size = self.limits.max_body_bytes
        return app_config
