"""One filter language for every endpoint and for tenant rules.

    {"categories": ["shoes"], "tags": ["sale"], "available": true,
     "attributes": {"price": {"gte": 10, "lte": 50}, "brand": {"in": ["acme", "zeta"]}, "color": "red"}}

Fields combine with AND; a list matches an item that has any of its values. ``attributes`` takes,
per attribute, a range (``gte``, ``gt``, ``lte``, ``lt``: numbers), ``in`` (a list of strings or
numbers), ``eq`` (a string or number) or a bare string or number (same as ``eq``). Only available
items are indexed, so ``"available": true`` always holds and ``"available": false`` matches nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from lodestar.errors import InvalidInput
from lodestar.jsonvalues import decode_json
from lodestar.records import parse_id

RANGE_OPS = ("gte", "gt", "lte", "lt")
# Attribute names a filter (and a payload index) can address: the index engines read a name as a
# JSON path, where spaces, dots, brackets and quotes mean something else.
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_VALUES = 1000


@dataclass(frozen=True)
class AttributeCondition:
    key: str
    range: dict[str, float] = field(default_factory=dict)
    values: tuple[str | float, ...] = ()  # any of these (eq is a one-value list)

    def matches(self, attributes: dict[str, Any]) -> bool:
        """As Qdrant matches a field condition: a list-valued attribute matches when any of its
        elements does (the range and the values each by any element)."""
        value = attributes.get(self.key)
        if value is None or isinstance(value, bool):
            return False
        candidates = value if isinstance(value, list) else [value]
        if self.range and not any(self._in_range(v) for v in candidates):
            return False
        if self.values:
            return any(v in self.values for v in candidates if not isinstance(v, bool))
        return True

    def _in_range(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        bounds = self.range
        return (("gte" not in bounds or value >= bounds["gte"]) and ("gt" not in bounds or value > bounds["gt"])
                and ("lte" not in bounds or value <= bounds["lte"]) and ("lt" not in bounds or value < bounds["lt"]))


@dataclass(frozen=True)
class ItemFilter:
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    attributes: tuple[AttributeCondition, ...] = ()
    match_nothing: bool = False  # "available": false
    exclude_categories: tuple[str, ...] = ()  # from a user's disliked categories, not the JSON language

    @property
    def empty(self) -> bool:
        return not (self.categories or self.tags or self.attributes or self.match_nothing or self.exclude_categories)

    def matches(self, payload: dict[str, Any]) -> bool:
        """Whether an item's payload passes (for in-memory readers and rules)."""
        if self.match_nothing:
            return False
        if self.categories and not set(self.categories) & set(payload.get("categories") or ()):
            return False
        if self.exclude_categories and set(self.exclude_categories) & set(payload.get("categories") or ()):
            return False
        if self.tags and not set(self.tags) & set(payload.get("tags") or ()):
            return False
        attributes = payload.get("attributes") or {}
        return all(c.matches(attributes) for c in self.attributes)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{where}: must be a list of strings", field=where)
    if len(value) > MAX_VALUES:
        raise InvalidInput(f"{where}: at most {MAX_VALUES} values", field=where)
    return tuple(value)


def _scalar(value: Any, where: str) -> str | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"{where}: must be a string or a number", field=where)
    return _finite(value, where) if isinstance(value, (int, float)) else value


def _finite(value: int | float, where: str) -> float:
    # NaN and infinities have no order: a query engine given one fails or matches nothing.
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"{where}: must be a finite number", field=where)
    return number


def _attribute(key: str, spec: Any, where: str) -> AttributeCondition:
    if not ATTRIBUTE_NAME.match(key):
        raise InvalidInput(f"{where}: attribute names in filters are 1 to 64 letters, digits, '_' or '-'", field=where)
    if not isinstance(spec, dict):
        return AttributeCondition(key, values=(_scalar(spec, where),))
    unknown = set(spec) - set(RANGE_OPS) - {"in", "eq"}
    if unknown or not spec:
        raise InvalidInput(f"{where}: use gte, gt, lte, lt, in or eq (got {', '.join(sorted(unknown)) or 'nothing'})", field=where)
    bounds: dict[str, float] = {}
    for op in RANGE_OPS:
        if op in spec:
            if isinstance(spec[op], bool) or not isinstance(spec[op], (int, float)):
                raise InvalidInput(f"{where}.{op}: must be a number", field=f"{where}.{op}")
            bounds[op] = _finite(spec[op], f"{where}.{op}")
    values: tuple[str | float, ...] = ()
    if "in" in spec:
        if not isinstance(spec["in"], list) or not spec["in"] or len(spec["in"]) > MAX_VALUES:
            raise InvalidInput(f"{where}.in: must be a non-empty list of strings or numbers", field=f"{where}.in")
        values = tuple(_scalar(v, f"{where}.in") for v in spec["in"])
    if "eq" in spec:
        values = values + (_scalar(spec["eq"], f"{where}.eq"),)
    return AttributeCondition(key, bounds, values)


def parse_filter(raw: Any, where: str = "filter") -> ItemFilter:
    """Validate a filter object (or its JSON text); errors name the offending field."""
    if raw is None or raw == "":
        return ItemFilter()
    if isinstance(raw, str):
        raw = decode_json(raw, where)
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where}: must be a JSON object", field=where)
    unknown = set(raw) - {"categories", "tags", "available", "attributes"}
    if unknown:
        raise InvalidInput(f"{where}: unknown field {sorted(unknown)[0]!r}; use categories, tags, available or attributes", field=where)
    available = raw.get("available", True)
    if not isinstance(available, bool):
        raise InvalidInput(f"{where}.available: must be true or false", field=f"{where}.available")
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict):
        raise InvalidInput(f"{where}.attributes: must be an object of attribute name to condition", field=f"{where}.attributes")
    return ItemFilter(
        categories=_strings(raw["categories"], f"{where}.categories") if "categories" in raw else (),
        tags=_strings(raw["tags"], f"{where}.tags") if "tags" in raw else (),
        attributes=tuple(_attribute(k, v, f"{where}.attributes.{k}") for k, v in attributes.items()),
        match_nothing=not available,
    )


def parse_exclude(raw: Any, where: str = "exclude") -> tuple[str, ...]:
    """Item ids to leave out: a list (bodies) or comma-separated text (query strings)."""
    if raw is None or raw == "":
        return ()
    values = [v for v in raw.split(",") if v.strip()] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InvalidInput(f"{where}: must be a list of item ids (comma-separated in a query string)", field=where)
    if len(values) > MAX_VALUES:
        raise InvalidInput(f"{where}: at most {MAX_VALUES} ids", field=where)
    return tuple(parse_id(v, f"{where}[{n}]") for n, v in enumerate(values))
