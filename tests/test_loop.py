"""Where the hottest requests' blocking work runs (serving/loop.py): on the event loop's thread when
everything they read is in this process, in a worker thread otherwise."""

import asyncio
import dataclasses

import pytest
from litestar.testing import TestClient

import serving.auth
from lodestar.cdp import cdp_session
from lodestar.keys import issue_key
from serving.app import create_app
from serving.loop import reads_in_process, run_blocking
from tests.helpers import app_settings_with, bearer, on_an_event_loop


def test_reads_are_in_process_only_with_every_embedded_store(tmp_path):
    settings = app_settings_with(tmp_path)
    assert reads_in_process(settings, shared_rates=False)
    assert not reads_in_process(settings, shared_rates=True)
    assert not reads_in_process(dataclasses.replace(settings, arango_url="http://arango:8529"), shared_rates=False)
    assert not reads_in_process(dataclasses.replace(settings, qdrant_url="http://qdrant:6333"), shared_rates=False)


@pytest.mark.parametrize("in_process", [True, False])
def test_run_blocking_runs_on_the_loop_only_in_process(in_process):
    async def main() -> tuple[bool, int]:
        return await run_blocking(in_process, lambda a, b=0: (on_an_event_loop(), a + b), 1, b=2)

    assert asyncio.run(main()) == (in_process, 3)


def test_the_key_guard_runs_where_the_app_says(tmp_path, monkeypatch):
    """The default app (SQLite, Qdrant Edge, rates in memory) checks a key on the loop's thread; the
    same app told that its reads cross a network checks it in a worker thread, with the same answers."""
    settings = app_settings_with(tmp_path, "acme")
    with cdp_session(settings) as store:
        key = issue_key(store, "acme", ("events",))
    seen: list[bool] = []
    guard = serving.auth._require_principal

    def recording(connection, handler):
        seen.append(on_an_event_loop())
        return guard(connection, handler)

    monkeypatch.setattr(serving.auth, "_require_principal", recording)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.services.in_process
        assert client.get("/v1/users/u1/preferences", headers=bearer(key)).status_code == 200
        assert client.get("/v1/users/u1/preferences", headers=bearer("lsk_nope_nope")).status_code == 401
        client.app.state.services = dataclasses.replace(client.app.state.services, in_process=False)
        assert client.get("/v1/users/u1/preferences", headers=bearer(key)).status_code == 200
        assert client.get("/v1/users/u1/preferences", headers=bearer("lsk_nope_nope")).status_code == 401
    assert seen == [True, True, False, False]
