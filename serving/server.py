"""Run the Litestar app (:func:`serving.app.create_app`) under uvicorn in this process.

The server bounds what it reads before the app sees a request (:class:`serving.limits.RequestLimits`
has the numbers and their ``LODESTAR_*`` variables): the size of the request head, the time it
may take to arrive, idle keep-alive connections and open connections. It speaks HTTP/1.1 with h11,
not httptools: h11 bounds the head it buffers, while httptools collects a header of any size, so one
request with a 64 MB header stalled every other request for seconds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from serving.app import create_app
from serving.limits import RequestLimits

APP_FACTORY = "serving.app:create_app"  # what each worker process imports and calls


def _ensure_port_free(host: str, port: int) -> None:
    # uvicorn only logs a bind failure and exits; probing first gives the user a clear error
    # (before the app, and the indexes it opens, start up).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise InvalidInput(f"{host}:{port} is already in use; stop the other server or pass --port") from None


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two more bounds on the request head.

    - Time: a connection that has not sent a whole request head ``header_timeout_s`` after it
      opened, or after the head's first byte, is closed (uvicorn has no such timeout, so a client
      trickling header bytes held a connection for ever).
    - Size: h11 refuses a head larger than ``h11_max_incomplete_event_size``; uvicorn answers that
      with a bare 400, this answers 431 with problem details.
    """

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._await_head()  # a head is (still) arriving
        elif self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # IDLE: no whole request head yet (not while a request is being answered). h11 cannot
        # send a response before it has read a request, so the connection is simply closed.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size
        if limit is None or len(self.conn.trailing_data[0]) <= limit:
            super().send_400_response(msg)
            return
        body = json.dumps({
            "type": "about:blank", "title": "Request header fields too large", "status": 431,
            "detail": f"the request line and headers are larger than {limit} bytes",
        }).encode()
        headers = [(b"content-type", b"application/problem+json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=431, headers=headers, reason=b"Request Header Fields Too Large"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


@functools.cache
def _environment_limits() -> RequestLimits:
    return RequestLimits.from_env()


class EnvironmentH11Protocol(BoundedH11Protocol):
    """The protocol of worker processes (``--workers``): importable by name, so that uvicorn can
    start it in a fresh process, with the header timeout of the environment it inherits."""

    @property
    def header_timeout_s(self) -> float:  # type: ignore[override]
        return _environment_limits().header_timeout_s


def server_config(app: Any, host: str, port: int, log_level: str = "info",
                  limits: RequestLimits | None = None, workers: int = 1) -> uvicorn.Config:
    """The uvicorn configuration ``lodestar serve`` runs ``app`` with (an app object, or with
    several ``workers`` the import path of the app factory, which each worker calls)."""
    limits = limits or RequestLimits.from_env()
    protocol: type[BoundedH11Protocol] = (
        EnvironmentH11Protocol if workers > 1 else
        type("LodestarH11Protocol", (BoundedH11Protocol,), {"header_timeout_s": limits.header_timeout_s}))
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, workers=workers, factory=workers > 1,
        http=protocol,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_s,
        # Past this many connections (or tasks) uvicorn answers 503 itself; the app's own limit
        # (serving.limits) is far lower and answers first, with problem details.
        limit_concurrency=limits.max_connections,
        # A slow client cannot hold up a shutdown (docker stops a container 10 s after SIGTERM).
        timeout_graceful_shutdown=8,
        # The app writes one JSON line per request (serving.observability) and configured the
        # log handlers when it was created: uvicorn neither adds its own nor replaces them.
        access_log=False,
        log_config=None,
    )


def serve(
    settings: Settings, host: str, port: int, log_level: str = "info", on_ready: Callable[[], None] | None = None,
    workers: int = 1,
) -> None:
    """Serve the API on ``host:port`` until interrupted. ``on_ready`` is called once, from another
    thread, when the server accepts connections (not called if it never starts).

    With ``workers`` > 1, that many processes accept on one socket, each with its own app (created
    from the environment, as ``settings`` were); they share the index versions and collaborative
    models through the page cache (both are memory-mapped files), so memory grows by each worker's
    interpreter and embedding model, not by another copy of the data."""
    _ensure_port_free(host, port)
    limits = RequestLimits.from_env()
    if workers > 1:
        from uvicorn.supervisors import Multiprocess

        # Each worker's rate quotas (serving.quotas) admit its share of a tenant's rate.
        os.environ["LODESTAR_WORKERS"] = str(workers)

        logging.getLogger("lodestar").setLevel(log_level.upper())
        config = server_config(APP_FACTORY, host, port, log_level, limits, workers=workers)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    app = create_app(settings)
    logging.getLogger("lodestar").setLevel(log_level.upper())  # the request log too (`demo` serves quietly)
    server = uvicorn.Server(server_config(app, host, port, log_level, limits))
    if on_ready is not None:
        def wait_then_announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.1)
            if server.started:
                on_ready()

        threading.Thread(target=wait_then_announce, daemon=True, name="lodestar-on-ready").start()
    server.run()
