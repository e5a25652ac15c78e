"""Audience segments: who among a tenant's users a rule (or a seed's lookalikes) picks.

A tenant's segments live in its configuration (``segments``: validated like every other key, with
versions, audit and undo), and the pipeline's ``audience_segments`` asset keeps their members in the
CDP store. Two kinds:

* a **rule** segment: ``{"name": "recent-runners", "rule": RULE}``, where RULE is one of
  - ``{"attribute": "country", "in": ["US", "CA"]}`` (a profile attribute; a list attribute matches
    when any of its values does), ``{"attribute": "age", "gte": 18, "lt": 30}``;
  - ``{"event": "purchase", "days": 30, "min": 1, "category": "running"}``: at least ``min`` events
    of that type (or list of types) in the last ``days`` days, on items of a ``category``, a
    ``brand`` (the item's ``brand`` attribute) or one ``item`` (any item when none is given);
  - ``{"all": [RULE, ...]}``, ``{"any": [RULE, ...]}``, ``{"not": RULE}``;
* a **lookalike** segment: ``{"name": "runners-lookalike", "lookalike": {"seed": "recent-runners",
  "size": 500}}``: the ``size`` users outside the seed nearest to the seed's centroid in taste space
  (their collaborative vectors, the ones recommendations use).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lodestar.errors import InvalidInput
from lodestar.records import EVENT_TYPES

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_SEGMENTS = 100
MAX_DEPTH = 6
MAX_LOOKALIKE = 1_000_000
DAY_S = 86400
COMPARISONS = ("gte", "gt", "lte", "lt")


@dataclass(frozen=True)
class Segment:
    name: str
    rule: dict[str, Any] | None = None
    seed: str | None = None
    size: int = 0

    @property
    def lookalike(self) -> bool:
        return self.seed is not None


def _check_rule(rule: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: rules nest at most {MAX_DEPTH} deep", field=where)
    if not isinstance(rule, dict) or not rule:
        raise InvalidInput(f"{where}: a rule object (attribute, event, all, any or not)", field=where)
    kinds = [k for k in ("attribute", "event", "all", "any", "not") if k in rule]
    if len(kinds) != 1:
        raise InvalidInput(f"{where}: exactly one of attribute, event, all, any, not", field=where)
    kind = kinds[0]
    if kind in ("all", "any"):
        if set(rule) != {kind} or not isinstance(rule[kind], list) or not 1 <= len(rule[kind]) <= 50:
            raise InvalidInput(f"{where}.{kind}: a list of 1 to 50 rules", field=f"{where}.{kind}")
        for n, sub in enumerate(rule[kind]):
            _check_rule(sub, f"{where}.{kind}[{n}]", depth + 1)
    elif kind == "not":
        if set(rule) != {"not"}:
            raise InvalidInput(f"{where}: 'not' takes one rule and nothing beside it", field=where)
        _check_rule(rule["not"], f"{where}.not", depth + 1)
    elif kind == "attribute":
        extra = set(rule) - {"attribute", "in", *COMPARISONS}
        if extra or not isinstance(rule["attribute"], str) or not rule["attribute"].strip():
            raise InvalidInput(f"{where}: {{\"attribute\": NAME, \"in\": [...]}} or gte/gt/lte/lt bounds", field=where)
        if "in" in rule and (not isinstance(rule["in"], list) or not rule["in"] or len(rule["in"]) > 500
                             or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in rule["in"])):
            raise InvalidInput(f"{where}.in: a list of 1 to 500 texts or numbers", field=f"{where}.in")
        for bound in COMPARISONS:
            if bound in rule and (isinstance(rule[bound], bool) or not isinstance(rule[bound], (int, float))):
                raise InvalidInput(f"{where}.{bound}: a number", field=f"{where}.{bound}")
        if not set(rule) & {"in", *COMPARISONS}:
            raise InvalidInput(f"{where}: say what the attribute must be ('in' or a bound)", field=where)
    else:
        extra = set(rule) - {"event", "days", "min", "category", "brand", "item"}
        if extra:
            raise InvalidInput(f"{where}.{sorted(extra)[0]}: unknown; an event rule has event, days, min and one of "
                               "category, brand, item", field=where)
        types = rule["event"] if isinstance(rule["event"], list) else [rule["event"]]
        if not types or any(t not in EVENT_TYPES for t in types):
            raise InvalidInput(f"{where}.event: one of {', '.join(EVENT_TYPES)} (or a list of them)",
                               field=f"{where}.event")
        days = rule.get("days", 30)
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 3650:
            raise InvalidInput(f"{where}.days: a number of days from 1 to 3650", field=f"{where}.days")
        least = rule.get("min", 1)
        if isinstance(least, bool) or not isinstance(least, int) or not 1 <= least <= 100_000:
            raise InvalidInput(f"{where}.min: a whole number of events, at least 1", field=f"{where}.min")
        if len(set(rule) & {"category", "brand", "item"}) > 1:
            raise InvalidInput(f"{where}: at most one of category, brand, item", field=where)
        for key in ("category", "brand", "item"):
            if key in rule and (not isinstance(rule[key], str) or not rule[key].strip()):
                raise InvalidInput(f"{where}.{key}: a text", field=f"{where}.{key}")


def parse_segments(raw: Any) -> list[Segment]:
    """The tenant's segment definitions, each error naming its field (``segments[1].rule.all[0]``)."""
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_SEGMENTS:
        raise InvalidInput(f"segments: a list of up to {MAX_SEGMENTS} segment definitions", field="segments")
    out: list[Segment] = []
    names: set[str] = set()
    for n, entry in enumerate(raw):
        where = f"segments[{n}]"
        if not isinstance(entry, dict) or set(entry) - {"name", "description", "rule", "lookalike"}:
            raise InvalidInput(f"{where}: an object with name, description and a rule or a lookalike", field=where)
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidInput(f"{where}.name: 1-63 lowercase letters, digits, '-' or '_'", field=f"{where}.name")
        if name in names:
            raise InvalidInput(f"{where}.name: {name!r} is defined twice", field=f"{where}.name")
        names.add(name)
        if ("rule" in entry) == ("lookalike" in entry):
            raise InvalidInput(f"{where}: a rule or a lookalike (one of them)", field=where)
        if "rule" in entry:
            _check_rule(entry["rule"], f"{where}.rule")
            out.append(Segment(name, rule=entry["rule"]))
            continue
        like = entry["lookalike"]
        if not isinstance(like, dict) or set(like) != {"seed", "size"}:
            raise InvalidInput(f"{where}.lookalike: {{\"seed\": SEGMENT, \"size\": N}}", field=f"{where}.lookalike")
        size = like["size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_LOOKALIKE:
            raise InvalidInput(f"{where}.lookalike.size: 1 to {MAX_LOOKALIKE} users", field=f"{where}.lookalike.size")
        out.append(Segment(name, seed=like["seed"], size=size))
    rules = {s.name for s in out if not s.lookalike}
    for n, segment in enumerate(out):
        if segment.lookalike and segment.seed not in rules:
            raise InvalidInput(f"segments[{n}].lookalike.seed: {segment.seed!r} is not a rule segment of this tenant",
                               field=f"segments[{n}].lookalike.seed")
    return out


# -- evaluation ----------------------------------------------------------------------------------
@dataclass
class Population:
    """What rules are evaluated over: profiles, events and the catalog (as the pipeline's extracts)."""

    users: pd.DataFrame  # id, attributes (dict)
    events: pd.DataFrame  # user_id, item_id, type, ts
    items: pd.DataFrame  # id, categories (list), attributes (dict)
    now: float

    @property
    def everyone(self) -> set[str]:
        return set(self.users["id"]) | set(self.events["user_id"])


def _attribute_match(value: Any, rule: dict[str, Any]) -> bool:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None:
            continue
        if "in" in rule and not any(str(v).lower() == str(w).lower() for w in rule["in"]):
            continue
        if any(b in rule for b in COMPARISONS):
            try:
                number = float(v)
            except (TypeError, ValueError):
                continue
            if ("gte" in rule and number < rule["gte"]) or ("gt" in rule and number <= rule["gt"]) or \
                    ("lte" in rule and number > rule["lte"]) or ("lt" in rule and number >= rule["lt"]):
                continue
        return True
    return False


def members(rule: dict[str, Any], population: Population) -> set[str]:
    """The users a rule picks."""
    if "all" in rule:
        result = None
        for sub in rule["all"]:
            picked = members(sub, population)
            result = picked if result is None else result & picked
        return result or set()
    if "any" in rule:
        return set().union(*(members(sub, population) for sub in rule["any"]))
    if "not" in rule:
        return population.everyone - members(rule["not"], population)
    if "attribute" in rule:
        key = rule["attribute"]
        return {u for u, attrs in zip(population.users["id"], population.users["attributes"], strict=True)
                if isinstance(attrs, dict) and _attribute_match(attrs.get(key), rule)}
    events = population.events
    types = rule["event"] if isinstance(rule["event"], list) else [rule["event"]]
    chosen = events[events["type"].isin(types) & (events["ts"] >= population.now - rule.get("days", 30) * DAY_S)]
    if "item" in rule:
        chosen = chosen[chosen["item_id"] == rule["item"]]
    elif "category" in rule or "brand" in rule:
        items = population.items
        if "category" in rule:
            wanted = rule["category"].lower()
            ids = {i for i, cats in zip(items["id"], items["categories"], strict=True)
                   if any(str(c).lower() == wanted for c in (cats if isinstance(cats, (list, tuple, np.ndarray)) else []))}
        else:
            wanted = rule["brand"].lower()
            ids = {i for i, attrs in zip(items["id"], items["attributes"], strict=True)
                   if isinstance(attrs, dict) and str(attrs.get("brand", "")).lower() == wanted}
        chosen = chosen[chosen["item_id"].isin(ids)]
    counts = chosen.groupby("user_id").size()
    return set(counts[counts >= rule.get("min", 1)].index)


def lookalikes(seed: Iterable[str], vectors: dict[str, np.ndarray], size: int) -> set[str]:
    """The ``size`` users outside ``seed`` nearest (cosine) to the seed's centroid in taste space."""
    seed = set(seed)
    inside = [vectors[u] for u in seed if u in vectors]
    if not inside:
        return set()

    def unit(v: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(v))
        return v / norm if norm else v

    centroid = unit(np.mean([unit(v) for v in inside], axis=0))
    outside = [u for u in vectors if u not in seed]
    if not outside:
        return set()
    matrix = np.stack([unit(vectors[u]) for u in outside])
    scores = matrix @ centroid
    order = np.argsort(-scores, kind="stable")[:size]
    return {outside[i] for i in order}
