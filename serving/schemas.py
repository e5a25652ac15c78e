"""Request and response bodies (msgspec)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class ScoredItem(msgspec.Struct):
    id: str
    score: float
    title: str


class ItemList(msgspec.Struct):
    items: list[ScoredItem]
    recommendation_id: str
    index_version: str
    strategy: str


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    k: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct):
    status: str
    tenants: dict[str, str]
