"""Resources: the one place that turns settings into adapters (SQLite or ArangoDB, Qdrant Edge or
server). Nothing is opened at import time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from dagster import AssetKey, ConfigurableResource, InitResourceContext

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

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """At the start of a run that embeds a tenant whose items changed since its features were
        computed, load the embedding model in the background: its imports take seconds, which then
        overlap the steps before item_embeddings instead of delaying it."""
        run = context.dagster_run
        selection = run.asset_selection if run is not None else None
        tenant = run.tags.get("dagster/partition") if run is not None else None
        if not tenant or not selection or AssetKey("item_embeddings") not in selection:
            return
        files = self.files(tenant)
        items = files.extract("items")
        if items.is_file() and (not files.item_features.is_file()
                                or items.stat().st_mtime > files.item_features.stat().st_mtime):
            self.embedder().prewarm()

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
