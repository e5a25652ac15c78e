"""Query-time controls and merchandising rules, applied after a strategy has ranked its candidates.

* Per request: ``filter`` (see :mod:`lodestar.filters`), ``exclude`` item ids, ``diversity`` 0..1
  (maximal marginal relevance over the items' text embeddings: 0 is pure relevance).
* Per tenant (configuration ``rules``), each optionally active between ``start`` and ``end``:
  ``{"type": "boost"|"bury", "filter": {...}, "amount": 0.5}`` moves matching items up or down by
  ``amount`` times the list's score range (1.0 takes an item from the bottom to the top), and
  ``{"type": "pin", "item_id": "p1", "position": 1}`` puts an item at a position (1-based) when it
  passes the request's filter and is not excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.explain import PINNED_SOURCE, Trace
from lodestar.filters import ItemFilter, parse_filter
from lodestar.index import Hit, IndexReader
from lodestar.records import parse_timestamp


@dataclass(frozen=True)
class Controls:
    item_filter: ItemFilter = field(default_factory=ItemFilter)
    exclude: tuple[str, ...] = ()
    diversity: float = 0.0

    def pool(self, k: int, rules: list[Rule]) -> int:
        """How many ranked candidates the strategies should produce before the controls cut to k."""
        return max(3 * k, 50) if self.diversity > 0 or rules else k


def parse_diversity(raw: Any) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidInput("diversity: must be a number from 0 to 1", field="diversity") from None
    if isinstance(raw, bool) or not 0.0 <= value <= 1.0:
        raise InvalidInput("diversity: must be a number from 0 to 1", field="diversity")
    return value


@dataclass(frozen=True)
class Rule:
    type: str  # boost, bury, pin
    item_filter: ItemFilter | None = None
    amount: float = 0.0
    item_id: str | None = None
    position: int = 0
    start: float | None = None
    end: float | None = None
    label: str = ""  # how explanations name it: ``rules[2]``, or where else it came from

    def active(self, now: float) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)


def parse_rules(raw: Any) -> list[Rule]:
    """Validate the tenant's ``rules``; errors name the rule and the field."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("rules: must be a list", field="rules")
    rules = []
    for n, spec in enumerate(raw):
        where = f"rules[{n}]"
        if not isinstance(spec, dict) or spec.get("type") not in ("boost", "bury", "pin"):
            raise InvalidInput(f"{where}.type: must be boost, bury or pin", field=f"{where}.type")
        unknown = set(spec) - {"type", "filter", "amount", "item_id", "position", "start", "end"}
        if unknown:
            raise InvalidInput(f"{where}: unknown field {sorted(unknown)[0]!r}", field=where)
        try:
            start = parse_timestamp(spec.get("start"), f"{where}.start", bounded=False)
            end = parse_timestamp(spec.get("end"), f"{where}.end", bounded=False)
        except InvalidInput as exc:
            raise InvalidInput(str(exc), field=exc.field) from None
        if spec["type"] == "pin":
            item_id, position = spec.get("item_id"), spec.get("position")
            if not isinstance(item_id, str) or not item_id:
                raise InvalidInput(f"{where}.item_id: a pin needs the item id", field=f"{where}.item_id")
            if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position <= 100:
                raise InvalidInput(f"{where}.position: must be an integer from 1 to 100", field=f"{where}.position")
            rules.append(Rule("pin", item_id=item_id, position=position, start=start, end=end, label=where))
        else:
            amount = spec.get("amount", 0.5)
            if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 < amount <= 10:  # NaN fails too
                raise InvalidInput(f"{where}.amount: must be a number above 0 (1.0 = the whole score range)", field=f"{where}.amount")
            if "filter" not in spec:
                raise InvalidInput(f"{where}.filter: a {spec['type']} rule needs a filter", field=f"{where}.filter")
            rules.append(Rule(spec["type"], parse_filter(spec["filter"], f"{where}.filter"), float(amount),
                              start=start, end=end, label=where))
    return rules


def mmr(hits: list[Hit], vectors: dict[str, np.ndarray], k: int, diversity: float) -> list[Hit]:
    """Greedy maximal marginal relevance: each next item maximizes
    ``(1 - diversity) * relevance - diversity * max similarity to the items already chosen``."""
    if diversity <= 0 or len(hits) <= 1:
        return hits[:k]
    scores = np.asarray([h.score for h in hits], dtype=np.float64)
    span = scores.max() - scores.min()
    relevance = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    dim = next(iter(vectors.values())).shape[0] if vectors else 1
    matrix = np.stack([vectors.get(h.item_id, np.zeros(dim, dtype=np.float32)) for h in hits])
    similarity = matrix @ matrix.T
    chosen: list[int] = []
    closest = np.full(len(hits), -np.inf)
    remaining = np.ones(len(hits), dtype=bool)
    for _ in range(min(k, len(hits))):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = (1 - diversity) * relevance - diversity * penalty
        value[~remaining] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        remaining[best] = False
        closest = np.maximum(closest, similarity[best])
    return [hits[i] for i in chosen]


def apply(
    reader: IndexReader, hits: list[Hit], k: int, controls: Controls, rules: list[Rule], now: float | None = None,
    trace: Trace | None = None,
) -> list[Hit]:
    """Boost and bury, diversify, cut to k, then pin. With a ``trace``, each item's rank before
    and after the rules, every rule that moved it and by how much, and its final rank are noted."""
    now = datetime.now(UTC).timestamp() if now is None else now
    active = [r for r in rules if r.active(now)]
    shifts = [r for r in active if r.type in ("boost", "bury")]
    if trace is not None:
        for rank, hit in enumerate(hits, 1):
            trace.ranks(hit.item_id, rank_before_rules=rank)
            trace.signals(hit.item_id, score=hit.score)
    if shifts and hits:
        scores = [h.score for h in hits]
        span = (max(scores) - min(scores)) or 1.0
        moved = []
        for hit in hits:
            delta = 0.0
            for rule in shifts:
                if rule.item_filter is not None and rule.item_filter.matches(hit.payload):
                    effect = (rule.amount if rule.type == "boost" else -rule.amount) * span
                    delta += effect
                    if trace is not None:
                        trace.rule(hit.item_id, rule.label, rule.type, score_change=round(effect, 6))
            moved.append((Hit(hit.item_id, hit.score + delta, hit.payload, hit.vector), delta))
        # On a tie the shifted item wins: a boost of 1.0 really takes the last item to the top.
        hits = [h for h, _ in sorted(moved, key=lambda pair: (-pair[0].score, -pair[1]))]
    if trace is not None:
        for rank, hit in enumerate(hits, 1):
            trace.ranks(hit.item_id, rank_after_rules=rank)
    if controls.diversity > 0:
        vectors = {h.item_id: h.vector for h in hits if h.vector is not None}
        missing = [h.item_id for h in hits if h.item_id not in vectors]
        vectors.update(reader.vectors(missing) if missing else {})
        hits = mmr(hits, vectors, k, controls.diversity)
    hits = hits[:k]
    for rule in sorted((r for r in active if r.type == "pin"), key=lambda r: r.position):
        if rule.item_id in controls.exclude:
            continue
        pinned = next((h for h in hits if h.item_id == rule.item_id), None) or reader.get(rule.item_id)
        if pinned is None or not controls.item_filter.matches(pinned.payload):
            continue
        hits = [h for h in hits if h.item_id != rule.item_id]
        top = hits[0].score if hits else 1.0
        position = min(rule.position, len(hits) + 1)
        hits.insert(position - 1, Hit(pinned.item_id, top, pinned.payload))
        hits = hits[:k]
        if trace is not None:
            trace.source(pinned.item_id, PINNED_SOURCE)
            trace.rule(pinned.item_id, rule.label, "pin", position=position)
    if trace is not None:
        for rank, hit in enumerate(hits, 1):
            trace.ranks(hit.item_id, rank=rank)
    return hits
