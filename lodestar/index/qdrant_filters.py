"""The one translation of Lodestar's filter language (:class:`lodestar.filters.ItemFilter`) into
Qdrant conditions, shared by both Qdrant adapters: qdrant-edge-py and qdrant-client spell the same
conditions with different classes, so each adapter passes a small :class:`ConditionFactory`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from lodestar.filters import ItemFilter


class ConditionFactory(Protocol):
    """Builds one Qdrant library's filter objects (qdrant-edge-py and qdrant-client spell them apart)."""

    def match_any(self, key: str, values: list[Any]) -> Any: ...
    def range(self, key: str, bounds: dict[str, float]) -> Any: ...
    def combine(self, must: list[Any] | None = None, must_not: list[Any] | None = None,
                should: list[Any] | None = None) -> Any: ...


def translate_filter(
    item_filter: ItemFilter | None, excluded: Any | None, make: ConditionFactory, base: Sequence[Any] = (),
) -> Any | None:
    """The query's filter in Qdrant's terms, the one translation both adapters use: ``base`` (the
    tenant conditions of a shared collection), the filter's fields ANDed, and as ``must_not`` the
    excluded points (``excluded``: the adapter's has-id condition, ``None`` for none; an adapter
    may reuse one, since building it for thousands of ids costs more than the query) and the
    disliked categories. ``None`` when nothing restricts the query."""
    must: list[Any] = list(base)
    must_not: list[Any] = [excluded] if excluded is not None else []
    if item_filter is not None:
        if item_filter.categories:
            must.append(make.match_any("categories", list(item_filter.categories)))
        if item_filter.tags:
            must.append(make.match_any("tags", list(item_filter.tags)))
        for cond in item_filter.attributes:
            key = f"attributes.{cond.key}"
            if cond.range:
                must.append(make.range(key, dict(cond.range)))
            if cond.values:
                strings = [v for v in cond.values if isinstance(v, str)]
                options = [make.match_any(key, strings)] if strings else []
                options += [make.range(key, {"gte": v, "lte": v}) for v in cond.values if not isinstance(v, str)]
                must.append(options[0] if len(options) == 1 else make.combine(should=options))
        if item_filter.exclude_categories:
            must_not.append(make.match_any("categories", list(item_filter.exclude_categories)))
    if not must and not must_not:
        return None
    return make.combine(must=must or None, must_not=must_not or None)
