"""The Litestar application factory."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from lodestar import __version__
from lodestar.cdp import open_cdp
from lodestar.collab import CollabModel
from lodestar.embed import Embedder
from lodestar.index import open_index_store
from lodestar.settings import Settings
from lodestar.stages import TenantFiles
from serving.auth import provide_tenant, require_tenant_key
from serving.controllers import (
    EventController,
    HealthController,
    ItemController,
    PreferenceController,
    RecommendationController,
    SearchController,
    UserController,
)
from serving.errors import EXCEPTION_HANDLERS
from serving.indexes import TenantIndexes
from serving.served_log import ServedLog

log = logging.getLogger("lodestar.serving")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        cdp = open_cdp(settings)
        def load_model(tenant: str, version: str) -> CollabModel | None:
            path = TenantFiles(settings.tenant_dir(tenant)).model(version)
            return CollabModel.load(path) if (path / "meta.json").is_file() else None

        indexes = TenantIndexes(open_index_store(settings), load_model)
        embedder = Embedder(settings.embed_model, settings.cache_dir)
        app.state.cdp, app.state.indexes, app.state.embedder = cdp, indexes, embedder
        app.state.served_log = served_log = ServedLog(cdp)
        # Load the model off the event loop so that the first search does not pay for it; /ready
        # waits for it.
        app.state.embedder_loaded = threading.Event()

        def load() -> None:
            try:
                embedder.warm_up()
            except Exception:  # noqa: BLE001 - /ready keeps answering 503 and the log says why
                log.exception("the embedding model failed to load")
            else:
                app.state.embedder_loaded.set()

        threading.Thread(target=load, name="load-embedder", daemon=True).start()
        try:
            yield
        finally:
            served_log.close()
            indexes.close()
            cdp.close()

    return Litestar(
        route_handlers=[RecommendationController, ItemController, SearchController, EventController,
                        PreferenceController, UserController, HealthController],
        guards=[require_tenant_key],
        dependencies={"tenant": Provide(provide_tenant, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(title="Lodestar", version=__version__, path="/schema"),
    )
