"""The resource the assets need: Lodestar's settings and the adapters they choose (SQLite or
ArangoDB, Qdrant Edge or server, the embedding model). Nothing is opened at import time; the
``LODESTAR_*`` environment is read once per resource instance, when it is first used in a run,
sensor or schedule, not when Dagster imports the code location."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from dagster import AssetKey, ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from lodestar.cdp import CdpStore, cdp_session
from lodestar.embed import Embedder
from lodestar.index import IndexStore, open_index_store
from lodestar.lineage.files import TenantFiles
from lodestar.settings import Settings
from lodestar.tenant_config import TenantConfig, effective_config

progress_log = logging.getLogger("lodestar.progress")


@lru_cache(maxsize=1)
def _freeze_imports() -> None:
    gc.freeze()


@lru_cache(maxsize=4)
def _embedder(model: str, cache_dir: str, backend: str, models_dir: str) -> Embedder:
    # One model per process: loading it costs seconds, and runs of several tenants share it.
    return Embedder(model, Path(cache_dir), backend=backend, models_dir=Path(models_dir))


class LodestarResource(ConfigurableResource):
    """Lodestar's settings and adapters. Unset fields fall back to ``LODESTAR_*`` variables."""

    data_dir: str | None = None
    embed_model: str | None = None

    _resolved: dict[str, Any] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """At the start of a run that embeds a tenant whose items changed since its features were
        computed, load the embedding model in the background: its imports take seconds, which then
        overlap the steps before item_embeddings instead of delaying it.

        At the first run of a process, what it holds by then (Dagster's, pandas' and pyarrow's
        modules: millions of objects) is moved out of the garbage collector's sight (``gc.freeze``):
        the steps build hundreds of thousands of rows as Python objects, and each full collection
        they trigger would otherwise walk every one of those objects again. Once per process, so
        that a process running many tenants never freezes one run's garbage."""
        run = context.dagster_run
        if run is not None:  # a run's process (a sensor evaluating in the code server has no run)
            _freeze_imports()
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
        """The settings, read from the environment once and overridden by this resource's fields."""
        if "settings" not in self._resolved:
            settings = Settings.from_env()
            if self.data_dir:
                settings = replace(settings, data_dir=Path(self.data_dir).resolve())
            if self.embed_model:
                settings = replace(settings, embed_model=self.embed_model)
            self._resolved["settings"] = settings
        return self._resolved["settings"]

    @contextmanager
    def cdp(self) -> Iterator[CdpStore]:
        with cdp_session(self.settings()) as store:
            yield store

    def index_store(self) -> IndexStore:
        if "index_store" not in self._resolved:
            self._resolved["index_store"] = open_index_store(self.settings())
        return self._resolved["index_store"]

    def embedder(self) -> Embedder:
        settings = self.settings()
        return _embedder(settings.embed_model, str(settings.cache_dir), settings.embed_backend, str(settings.models_dir))

    def files(self, tenant: str) -> TenantFiles:
        return TenantFiles(self.settings().tenant_dir(tenant))

    def tenant_config(self, tenant: str) -> TenantConfig:
        with self.cdp() as store:
            record = store.get_tenant(tenant)
        return effective_config(record["config"] if record else None)
