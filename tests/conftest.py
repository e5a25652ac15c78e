"""Shared fixtures: a tiny data dir with two tenants, materialized through Dagster with the real
model and the real Qdrant Edge engine, once per test session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from lodestar import demo
from lodestar.cdp import CdpStore, open_cdp
from lodestar.importer import import_files
from lodestar.keys import issue_key
from lodestar.settings import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared"
MOVIELENS = SHARED / "data" / "movielens-small"


@dataclass
class Env:
    settings: Settings
    keys: dict[str, str]


def materialize_tenant(settings: Settings, tenant: str):
    """Materialize every asset of a tenant on an ephemeral Dagster instance."""
    from pipelines.run import materialize_in_process

    return materialize_in_process(str(settings.data_dir), tenant)


def load_demo_tenant(store: CdpStore, settings: Settings, tenant: str, generator: str, **sizes: int) -> str:
    store.create_tenant(tenant)
    files = demo.write_demo(settings.data_dir.parent / "input" / tenant, generator, **sizes)
    summary = import_files(store, settings, tenant, files)
    assert summary.rejected == 0
    return issue_key(store, tenant)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var")


@pytest.fixture()
def store(settings: Settings):
    cdp = open_cdp(settings)
    yield cdp
    cdp.close()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    """Tenants ``alpha`` (a small shop) and ``beta`` (a small news site), both published."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("lodestar") / "var")
    store = open_cdp(settings)
    try:
        keys = {
            "alpha": load_demo_tenant(store, settings, "alpha", "shop", n_items=96, n_users=24),
            "beta": load_demo_tenant(store, settings, "beta", "news", n_items=60, n_users=15),
        }
    finally:
        store.close()
    for tenant in keys:
        result = materialize_tenant(settings, tenant)
        assert result.success, f"materializing {tenant} failed"
    return Env(settings, keys)
