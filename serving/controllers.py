"""HTTP handlers, grouped by domain. Each reads the tenant from the ``tenant`` dependency."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, Request, get, post
from litestar.exceptions import HTTPException
from litestar.params import Parameter

from lodestar.errors import InvalidInput, NotFound
from lodestar.index import Hit
from lodestar.recommend import interacted_items, profile_text, recommend, similar_items
from lodestar.tenant_config import effective_config
from serving.schemas import Health, ItemList, Ready, ScoredItem, SearchRequest

K = Annotated[int, Parameter(ge=1, le=100, description="How many items to return (1 to 100)")]
# Enough history to exclude everything a user interacted with and to build their taste vector.
HISTORY_LIMIT = 5000


def _items(hits: list[Hit], version: str, strategy: str) -> ItemList:
    return ItemList(
        items=[ScoredItem(id=h.item_id, score=round(h.score, 6), title=h.payload.get("title", "")) for h in hits],
        recommendation_id=uuid.uuid4().hex,
        index_version=version,
        strategy=strategy,
    )


class RecommendationController(Controller):
    path = "/v1"
    tags = ["recommendations"]

    @get("/users/{user_id:str}/recommendations", operation_id="recommendForUser", sync_to_thread=True)
    def for_user(self, request: Request, tenant: str, user_id: str, k: K = 10) -> ItemList:
        """Items for a user: hybrid (collaborative + content) from their history, their profile when
        they have no history, popular items when nothing is known (``strategy`` says which)."""
        state = request.app.state
        published = state.indexes.get(tenant)
        record = state.cdp.get_tenant(tenant)
        config = effective_config(record["config"] if record else None)
        events = state.cdp.user_events(tenant, user_id, limit=HISTORY_LIMIT)
        profile_vector = None
        if not interacted_items(events):
            user = state.cdp.get_user(tenant, user_id)
            text = profile_text(user["attributes"] if user else {}, state.cdp.get_preferences(tenant, user_id), config)
            profile_vector = state.embedder.encode([text])[0] if text else None
        result = recommend(published.reader, events, k, config, published.model, profile_vector)
        return _items(result.items, published.reader.version, result.strategy)


class ItemController(Controller):
    path = "/v1/items"
    tags = ["items"]

    @get("/{item_id:str}/similar", operation_id="similarItems", sync_to_thread=True)
    def similar(self, request: Request, tenant: str, item_id: str, k: K = 10) -> ItemList:
        """Items most like this one (content embeddings)."""
        reader = request.app.state.indexes.reader(tenant)
        hits = similar_items(reader, item_id, k)
        if hits is None:
            raise NotFound(f"item {item_id!r} is not in the catalog (or is unavailable or deleted)")
        return _items(hits, reader.version, "similar_items")


class SearchController(Controller):
    path = "/v1/search"
    tags = ["search"]

    @post("/", operation_id="semanticSearch", status_code=200, sync_to_thread=True)
    def search(self, request: Request, tenant: str, data: SearchRequest) -> ItemList:
        """Items whose text is closest in meaning to the query."""
        if not data.query.strip():
            raise InvalidInput("query: must contain some text")
        reader = request.app.state.indexes.reader(tenant)
        vector = request.app.state.embedder.encode([data.query])[0]
        return _items(reader.nearest(vector, data.k), reader.version, "semantic_search")


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", opt={"public": True})
    async def health(self) -> Health:
        """The process is up."""
        return Health(status="ok")

    @get("/ready", operation_id="ready", opt={"public": True}, sync_to_thread=True)
    def ready(self, request: Request) -> Ready:
        """Ready once the embedding model and a published index are loaded (503 before)."""
        state = request.app.state
        if not state.embedder_loaded.is_set():
            raise HTTPException(status_code=503, detail="the embedding model is still loading")
        for tenant in state.cdp.list_tenants():
            try:
                state.indexes.reader(tenant["name"])
            except Exception:  # noqa: BLE001 - a tenant without an index does not make us unready
                continue
        loaded = state.indexes.loaded()
        if not loaded:
            raise HTTPException(status_code=503, detail="no published index is loaded yet; materialize a tenant")
        return Ready(status="ready", tenants=loaded)
