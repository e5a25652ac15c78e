"""Request limits: the server ``lodestar serve`` runs refuses oversized and slow request heads and
oversized bodies at once, and the API sheds load past its slots with 503 + Retry-After instead of
queueing without limit. The server tests run the real CLI on a free loopback port; every wait and
every request loop is bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from litestar import get

from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from serving.app import create_app
from serving.limits import RequestLimits
from serving.server import server_config
from tests.helpers import wait_until

CLI = [sys.executable, "-m", "lodestar.cli"]


@dataclass
class Server:
    url: str
    port: int
    log: Path  # the server's stderr and stdout, complete once the server has stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(tmp_path: Path, **env: str) -> Iterator[Server]:
    """``lodestar serve`` on a free loopback port with a fresh data dir and the tiny embedder."""
    port = _free_port()
    log = tmp_path / f"server-{port}.log"
    environ = {**os.environ, "LODESTAR_DATA_DIR": str(tmp_path / "var"), "LODESTAR_EMBED_MODEL": "hashing-64", **env}
    with log.open("w") as out:
        process = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)], env=environ,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, log)
    try:
        def up() -> bool:
            assert process.poll() is None, f"the server exited: {log.read_text()}"
            try:
                return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout=60, interval=0.1, message="the server did not start")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _health_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(400):  # bounded: about 20 s at most
            if stop.is_set():
                return
            started = time.perf_counter()
            assert client.get("/health").status_code == 200
            out.append(time.perf_counter() - started)
            time.sleep(0.05)


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_an_oversized_header_is_refused_at_once_and_health_stays_fast(tmp_path):
    with running_server(tmp_path) as server:
        stop, latencies = threading.Event(), []
        prober = threading.Thread(target=_health_latencies, args=(server.url, stop, latencies))
        prober.start()
        try:
            wait_until(lambda: len(latencies) >= 2, timeout=30, message="/health never answered")
            before = len(latencies)
            started = time.perf_counter()
            answer = b""
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
                try:
                    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
                    answer = conn.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # refused while still sending: the server closed the connection
            refused_after = time.perf_counter() - started
            time.sleep(0.3)
            wait_until(lambda: len(latencies) > before + 2, timeout=30, message="/health stalled after the big header")
            after = len(latencies)
        finally:
            stop.set()
            prober.join(timeout=30)
    assert not answer.startswith(b"HTTP/1.1 200"), "an 8 MB header was accepted"
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    if answer:
        assert b"application/problem+json" in answer and b"larger than 32768 bytes" in answer
    # No timing is asserted (shared, noisy machines): /health answered while the big head was sent,
    # and the big request was refused, not read to its end. How long each took is printed.
    print(f"refused after {refused_after:.2f} s; /health meanwhile: {len(latencies)} answers, "
          f"slowest {max(latencies, default=0):.3f} s")
    assert after > before, "/health did not answer again once the oversized header was sent"


def _read_answers(conn: socket.socket, count: int) -> list[bytes]:
    """``count`` whole HTTP answers (each with a Content-Length) from ``conn``."""
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return answers
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            rest += conn.recv(65536)
        answers.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return answers


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_the_head_limit_counts_heads_only(tmp_path):
    """A head just past LODESTAR_MAX_HEADER_BYTES gets 431; a large body, and a second request
    sent in the same packet behind it, are not counted as head bytes."""
    with running_server(tmp_path, LODESTAR_MAX_HEADER_BYTES="2048") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
            answer = b"".join(iter(lambda: conn.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 431") and b"larger than 2048 bytes" in answer, answer[:300]
        body = b'{"events": [' + b'{"user_id": "u1", "item_id": "i1", "type": "view"},' * 2000 + b"{}]}"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                         + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first, second = _read_answers(conn, 2)
        assert first.startswith(b"HTTP/1.1 401"), first[:300]  # read whole, then refused for want of a key
        assert second.startswith(b"HTTP/1.1 200"), second[:300]


def _closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``conn`` within ``seconds`` (reading and dropping what it sends)."""
    conn.settimeout(seconds)
    try:
        while conn.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_bytes_that_start_no_request_and_chunked_trailers_are_bounded(tmp_path):
    """After an answer, bytes that begin no request (a stray CRLF) get the head timeout as a head
    would; a chunked body's trailers count against the head limit and never reach the request."""
    with running_server(tmp_path, LODESTAR_HEADER_TIMEOUT="0.5", LODESTAR_MAX_HEADER_BYTES="2048") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answers(conn, 1)[0].startswith(b"HTTP/1.1 200")
            conn.sendall(b"\r\n")
            assert _closed_within(conn, 4), "a connection holding a stray CRLF was kept (head timeout 0.5 s)"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            conn.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
            time.sleep(0.2)  # the trailers in reads of their own
            conn.sendall(b"0\r\nX-Trailer: " + b"a" * 3000)
            assert _closed_within(conn, 4), "3 KB of trailers were buffered (limit 2,048 bytes)"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
            # An idle keep-alive connection is not cut by the head timeout (uvicorn's own: 5 s).
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answers(conn, 1)[0].startswith(b"HTTP/1.1 200")
            assert not _closed_within(conn, 1.5)
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answers(conn, 1)[0].startswith(b"HTTP/1.1 200")


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_a_request_head_that_trickles_in_is_cut_off(tmp_path):
    with running_server(tmp_path, LODESTAR_HEADER_TIMEOUT="0.5") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            started = time.perf_counter()
            closed = False
            for n in range(40):  # one header byte every 0.1 s, for 4 s at most
                try:
                    conn.sendall(b"X-Slow: %d\r\n" % n)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
                conn.settimeout(0.1)
                try:
                    if conn.recv(1024) == b"":
                        closed = True
                        break
                except TimeoutError:
                    pass
                except ConnectionResetError:
                    closed = True
                    break
        assert closed, "a head still arriving after 4 s was not cut off (the timeout is 0.5 s)"
        print(f"cut off after {time.perf_counter() - started:.2f} s")
        assert httpx.get(f"{server.url}/health").status_code == 200


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_a_body_over_the_limit_gets_413_problem_details(tmp_path):
    with running_server(tmp_path, LODESTAR_MAX_BODY_BYTES="1024") as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        big = b'{"events": [' + b'{"user_id": "u1", "item_id": "i1", "type": "view"},' * 40 + b"{}]}"
        answer = client.post("/v1/events", content=big, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "larger than 1024 bytes" in answer.json()["detail"]

        def chunks():  # no Content-Length: the size is only known while reading
            for _ in range(8):
                yield b"x" * 512

        assert client.post("/v1/events", content=chunks()).status_code == 413
        small = client.post("/v1/events", json={"events": []})
        assert small.status_code == 401  # under the limit: on to the key check


@contextmanager
def slow_app_served(monkeypatch, tmp_path: Path, **limits: str) -> Iterator[str]:
    """The app with a test-only slow route (``/test/slow?seconds=``), served by uvicorn with
    :func:`serving.server.server_config` in a thread; yields its URL."""
    for name, value in limits.items():
        monkeypatch.setenv(name, value)

    @get("/test/slow", opt={"public": True})
    async def slow(seconds: float) -> dict[str, str]:
        await asyncio.sleep(seconds)
        return {"status": "done"}

    app = create_app(Settings(data_dir=tmp_path / "var", embed_model="hashing-64"))
    app.register(slow)  # the production route list has no such route
    port = _free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, "warning"))
    thread = threading.Thread(target=server.run, name="test-server")
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, message="the server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _concurrently(url: str, n: int, seconds: float) -> tuple[list[httpx.Response], httpx.Response]:
    """``n`` slow requests at once, and a /health request while they run."""
    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=n + 1)) as client:
            slow = [client.get("/test/slow", params={"seconds": seconds}) for _ in range(n)]
            health = asyncio.create_task(_after(seconds / 3, client.get("/health")))
            answers = await asyncio.gather(*slow)
            return answers, await health

    return asyncio.run(scenario())


async def _after(delay: float, coroutine):
    await asyncio.sleep(delay)
    return await coroutine


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_past_its_slots_the_api_answers_503_with_retry_after(monkeypatch, tmp_path):
    with slow_app_served(monkeypatch, tmp_path, LODESTAR_MAX_IN_FLIGHT="2", LODESTAR_MAX_WAITING="1",
                         LODESTAR_MAX_WAIT="0.1", LODESTAR_RETRY_AFTER="3") as url:
        answers, health = _concurrently(url, 6, 1.2)
    # 2 run; 1 waits 0.1 s and gives up (the slots are held 1.2 s); 3 find the queue full.
    assert sorted(a.status_code for a in answers) == [200, 200, 503, 503, 503, 503]
    for shed in (a for a in answers if a.status_code == 503):
        assert shed.headers["retry-after"] == "3"
        assert shed.headers["content-type"].startswith("application/problem+json")
        assert shed.json()["title"] == "Overloaded" and "2 requests in flight" in shed.json()["detail"]
    assert health.status_code == 200  # probes never wait for a slot


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_a_request_waits_briefly_for_a_slot_rather_than_failing(monkeypatch, tmp_path):
    with slow_app_served(monkeypatch, tmp_path, LODESTAR_MAX_IN_FLIGHT="1", LODESTAR_MAX_WAITING="2",
                         LODESTAR_MAX_WAIT="5") as url:
        answers, _ = _concurrently(url, 3, 0.2)
    assert [a.status_code for a in answers] == [200, 200, 200]


def test_limits_come_from_the_environment_with_defaults():
    default = RequestLimits.from_env({})
    assert default.max_waiting == 2 * default.max_in_flight and default.max_body_bytes == 1 << 20
    tuned = RequestLimits.from_env({"LODESTAR_MAX_IN_FLIGHT": "3", "LODESTAR_MAX_WAIT": "0.25"})
    assert (tuned.max_in_flight, tuned.max_waiting, tuned.max_wait_s) == (3, 6, 0.25)
    with pytest.raises(InvalidInput, match="LODESTAR_MAX_IN_FLIGHT must be a number >= 1, not 'lots'"):
        RequestLimits.from_env({"LODESTAR_MAX_IN_FLIGHT": "lots"})
    with pytest.raises(InvalidInput, match="LODESTAR_MAX_WAIT must be"):
        RequestLimits.from_env({"LODESTAR_MAX_WAIT": "nan"})
