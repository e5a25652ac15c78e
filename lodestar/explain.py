"""Explanations of a ranked answer (``explain=true``): where each item came from and what moved it.

A :class:`Trace` is handed down the ranking code only when a request asks for explanations; every
stage that ranks writes what it knows of an item into it (its sources, the signals it was scored
with, the rules that fired and what they did, its rank before and after the rules and diversity).
Without one, the stages skip all of it: an answer without ``explain`` costs what it did before.

Sources, in the words of the API:

* ``collab``: a nearest neighbour of the user's folded-in collaborative vector;
* ``content``: a nearest neighbour of the user's taste (their items' text embeddings);
* ``profile``: a nearest neighbour of a new user's profile text;
* ``popular``: the tenant's most popular items (nothing known about the user);
* ``similar``: nearest to the item asked about; ``query``: nearest to the search query;
* ``pinned``: put at its position by a pin rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLLAB_SOURCE = "collab"
CONTENT_SOURCE = "content"
PROFILE_SOURCE = "profile"
POPULAR_SOURCE = "popular"
SIMILAR_SOURCE = "similar"
QUERY_SOURCE = "query"
PINNED_SOURCE = "pinned"


@dataclass
class Trace:
    """What the ranking stages of one answer noted about each item, by item id."""

    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _entry(self, item_id: str) -> dict[str, Any]:
        entry = self.items.get(item_id)
        if entry is None:
            entry = self.items[item_id] = {"sources": [], "rules": []}
        return entry

    def source(self, item_id: str, source: str) -> None:
        sources = self._entry(item_id)["sources"]
        if source not in sources:
            sources.append(source)

    def signals(self, item_id: str, **values: float | None) -> None:
        """Scores an item was ranked with (``collab_score``, ``content_similarity``, ``popularity``,
        ``score``); a value already noted is replaced."""
        self._entry(item_id).update({k: None if v is None else round(float(v), 6) for k, v in values.items()})

    def note(self, item_id: str, source: str, **values: float | None) -> None:
        """:meth:`source` and :meth:`signals` at once: a candidate with the scores it came with."""
        self.source(item_id, source)
        self.signals(item_id, **values)

    def rule(self, item_id: str, rule: str, kind: str, **effect: Any) -> None:
        self._entry(item_id)["rules"].append({"rule": rule, "type": kind, **effect})

    def ranks(self, item_id: str, **ranks: int) -> None:
        self._entry(item_id).update(ranks)

    def explanation(self, item_id: str) -> dict[str, Any]:
        """The item's explanation as the API returns it (every field present, ``None`` when the
        stage that would set it did not run for this item)."""
        entry = self.items.get(item_id, {})
        return {
            "sources": list(entry.get("sources", [])),
            "collab_score": entry.get("collab_score"),
            "content_similarity": entry.get("content_similarity"),
            "popularity": entry.get("popularity"),
            "score_before_rules": entry.get("score"),
            "rules": list(entry.get("rules", [])),
            "rank_before_rules": entry.get("rank_before_rules"),
            "rank_after_rules": entry.get("rank_after_rules"),
            "rank": entry.get("rank"),
        }
