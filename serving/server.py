"""Run the Litestar app (:func:`serving.app.create_app`) under uvicorn in this process.

The server bounds what it reads before the app sees a request (:class:`serving.limits.RequestLimits`
has the numbers and their ``LODESTAR_*`` variables): the size of the request head, the time it
may take to arrive, idle keep-alive connections and open connections. It speaks HTTP/1.1 with
httptools (llhttp, in C), whose parser collects a header of any size: :class:`BoundedHttpToolsProtocol`
counts what it is fed. (It spoke h11 before, which bounds the head itself, but parses in Python: a
request cost 0.07 ms more, a refusal of a flood past its quota half again as much.)
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

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from serving.app import LodestarApp, create_app
from serving.limits import RequestLimits

APP_FACTORY = "serving.server:served_app"  # what each worker process imports and calls


def _ensure_port_free(host: str, port: int) -> None:
    # uvicorn only logs a bind failure and exits; probing first gives the user a clear error
    # (before the app, and the indexes it opens, start up).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise InvalidInput(f"{host}:{port} is already in use; stop the other server or pass --port") from None


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (the C parser, llhttp) with two bounds on the request head.

    - Size: httptools collects a header of any size (one request with a 64 MB header stalled
      every other request for seconds), so the bytes of a head still incomplete after each read
      are counted here, and so are the URL and headers the parser reports; past
      ``max_head_bytes`` the request is answered 431 with problem details and the connection
      closed. What is buffered is bounded by that plus one read.
    - Time: a connection that has not sent a whole request head ``header_timeout_s`` after it
      opened, or after the head's first byte, is closed (uvicorn has no such timeout, so a client
      trickling header bytes held a connection for ever).
    """

    header_timeout_s: float = 10.0
    max_head_bytes: int = 32 * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # a head has begun (or the connection is new) and is not whole yet
        self._head_bytes = 0  # of reads within a head still incomplete
        self._head_size = 0  # of the request line and headers the parser reported
        self._stalled = 0  # bytes read outside a head since the parser last made progress (trailers, junk)
        self._completed = self._progress = self._head_done = False  # within the bytes being fed
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, but a head refused with 431 from a parser callback is not
        # also logged as an invalid request.
        self._completed = self._progress = self._head_done = False
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadTooLarge):
                self._invalid()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.transport.is_closing():
            return
        if self._in_head:
            # When no request ended within these bytes they are all this head's; otherwise the
            # head began inside them, and they are not counted (one read at most).
            if not self._completed:
                self._head_bytes += len(data)
                if self._head_bytes > self.max_head_bytes:
                    self._refuse_large_head()
                    return
        elif not self._progress:
            # Bytes the parser keeps without a body chunk or an end: a chunked body's trailers
            # (collected in full by httptools) or junk. Bounded as a head is.
            self._stalled += len(data)
            if self._stalled > self.max_head_bytes:
                self.transport.close()
                return
        if self._in_head or (not self._head_done and self._idle()):
            self._await_head()  # a head arriving, or bytes after an answer that start no request

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._head_size, self._progress = True, 0, 0, True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer of a chunked body: dropped (uvicorn would add it to the running request's headers)
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        """A head that arrived whole in one read is measured as the parser reports it."""
        self._head_size += size
        if self._head_size > self.max_head_bytes:
            self._refuse_large_head()
            raise _HeadTooLarge  # stops the parser (data_received knows it was answered)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_done, self._progress = False, True, True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._progress, self._stalled = True, 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._completed, self._progress, self._stalled = True, True, 0
        super().on_message_complete()

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
        if self.transport.is_closing():
            return
        if not self._idle():
            self._await_head()  # a request is being answered: look again later
            return
        # No whole head since the timer started (its end cancels the timer): a head trickling
        # in, or bytes after an answer that began no request (a keep-alive connection idle
        # between requests sends nothing, and has uvicorn's own timeout).
        self.transport.close()

    def _refuse_large_head(self) -> None:
        body = json.dumps({
            "type": "about:blank", "title": "Request header fields too large", "status": 431,
            "detail": f"the request line and headers are larger than {self.max_head_bytes} bytes",
        }).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                             b"content-type: application/problem+json\r\nconnection: close\r\n"
                             b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.close()


@functools.cache
def _environment_limits() -> RequestLimits:
    return RequestLimits.from_env()


class EnvironmentHttpToolsProtocol(BoundedHttpToolsProtocol):
    """The protocol of worker processes (``--workers``): importable by name, so that uvicorn can
    start it in a fresh process, with the head bounds of the environment it inherits."""

    @property
    def header_timeout_s(self) -> float:  # type: ignore[override]
        return _environment_limits().header_timeout_s

    @property
    def max_head_bytes(self) -> int:  # type: ignore[override]
        return _environment_limits().max_header_bytes


def served_app(settings: Settings | None = None) -> LodestarApp:
    """The app ``lodestar serve`` serves from this process (each worker's, with ``--workers``): the
    app of :func:`serving.app.create_app` that freezes what it holds at startup
    (:func:`serving.app.freeze_long_lived`)."""
    app = create_app(settings)
    app.freeze_at_startup = True
    return app


def server_config(app: Any, host: str, port: int, log_level: str = "info",
                  limits: RequestLimits | None = None, workers: int = 1) -> uvicorn.Config:
    """The uvicorn configuration ``lodestar serve`` runs ``app`` with (an app object, or with
    several ``workers`` the import path of the app factory, which each worker calls)."""
    limits = limits or RequestLimits.from_env()
    protocol: type[BoundedHttpToolsProtocol] = (
        EnvironmentHttpToolsProtocol if workers > 1 else
        type("LodestarHttpToolsProtocol", (BoundedHttpToolsProtocol,),
             {"header_timeout_s": limits.header_timeout_s, "max_head_bytes": limits.max_header_bytes}))
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, workers=workers, factory=workers > 1,
        http=protocol,
        ws="none",  # no WebSocket routes: an upgrade is answered as a plain request
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
    app = served_app(settings)
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
