"""Run the Litestar app (:func:`serving.app.create_app`) under uvicorn in this process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import uvicorn

from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from serving.app import create_app


def _ensure_port_free(host: str, port: int) -> None:
    # uvicorn only logs a bind failure and exits; probing first gives the user a clear error
    # (before the app, and the indexes it opens, start up).
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise InvalidInput(f"{host}:{port} is already in use; stop the other server or pass --port") from None


def serve(
    settings: Settings, host: str, port: int, log_level: str = "info", on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve the API on ``host:port`` until interrupted. ``on_ready`` is called once, from another
    thread, when the server accepts connections (not called if it never starts)."""
    _ensure_port_free(host, port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level=log_level))
    if on_ready is not None:
        def wait_then_announce() -> None:
            while not server.started and not server.should_exit:
                time.sleep(0.1)
            if server.started:
                on_ready()

        threading.Thread(target=wait_then_announce, daemon=True, name="lodestar-on-ready").start()
    server.run()
