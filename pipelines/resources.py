"""Resources: the one place that turns settings into adapters (SQLite or ArangoDB, Qdrant Edge or
server). Nothing is opened at import time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource

from lodestar.cdp import CdpStore, open_cdp
from lodestar.embed import Embedder
from lodestar.index import IndexStore, open_index_store
from lodestar.settings import Settings
from lodestar.stages import TenantFiles

progress_log = logging.getLogger("lodestar.progress")


@lru_cache(maxsize=4)
def _embedder(model: str, cache_dir: str) -> Embedder:
    # One model per process: loading it costs seconds, and runs of several tenants share it.
    return Embedder(model, Path(cache_dir))


class LodestarResource(ConfigurableResource):
    """Lodestar's settings and adapters. Unset fields fall back to ``LODESTAR_*`` variables,
    read when a run starts, not when Dagster imports the code location."""

    data_dir: str | None = None
    embed_model: str | None = None

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.data_dir:
            settings = replace(settings, data_dir=Path(self.data_dir).resolve())
        if self.embed_model:
            settings = replace(settings, embed_model=self.embed_model)
        return settings

    @contextmanager
    def cdp(self) -> Iterator[CdpStore]:
        store = open_cdp(self.settings())
        try:
            yield store
        finally:
            store.close()

    def index_store(self) -> IndexStore:
        return open_index_store(self.settings())

    def embedder(self) -> Embedder:
        settings = self.settings()
        return _embedder(settings.embed_model, str(settings.cache_dir))

    def files(self, tenant: str) -> TenantFiles:
        return TenantFiles(self.settings().tenant_dir(tenant))

    def tenant_config(self, tenant: str) -> dict:
        from lodestar.tenant_config import effective_config

        with self.cdp() as store:
            record = store.get_tenant(tenant)
        return effective_config(record["config"] if record else None)
