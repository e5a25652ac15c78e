"""Google Analytics 4's BigQuery export (``events_YYYYMMDD``), as Parquet or newline-delimited JSON.

One row per event: ``event_name``, ``event_timestamp`` (microseconds since the epoch; the JSON export
writes it as text), ``user_id`` and ``user_pseudo_id``, ``user_properties`` (a repeated
``{key, value: {string_value, int_value, float_value, double_value}}``) and ``items``, a repeated
record (``item_id``, ``item_name``, ``item_brand``, ``item_variant``, ``item_category`` to
``item_category5``, ``price``, ``quantity``, ``item_revenue``, ...).

A mapped e-commerce event becomes one Lodestar event per entry of ``items``; a purchase's value is
the entry's revenue (``item_revenue``, else ``price`` × ``quantity``). An entry without an
``item_id`` is rejected on its own (the row's other entries still import). Rows of event names the
mapping does not list (``page_view``, ``session_start``, ...) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lodestar.connectors.importing import (
    Converted,
    Mapping,
    attributes_from,
    number,
    products,
    text,
)
from lodestar.errors import InvalidInput
from lodestar.importer import read_rows
from lodestar.records import check_time_range

ENTITY = "events"
SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".json")
CATEGORY_FIELDS = ("item_category", "item_category2", "item_category3", "item_category4", "item_category5")


# The columns a conversion reads: of a Parquet export (dozens of columns, event_params the widest on
# every row), only these are decoded; a rejected row's copy in the reject file holds only these.
COLUMNS = ("event_name", "event_timestamp", "user_id", "user_pseudo_id", "items", "user_properties")


def read(path: Path, mapping: Mapping) -> Any:
    return read_rows(path, columns=(*COLUMNS, *mapping["user_id_fields"]))


def convert(row: dict[str, Any], mapping: Mapping) -> Converted:
    name = text(row.get("event_name"))
    if name is None:
        raise InvalidInput("event_name is missing: is this a GA4 BigQuery export row?")
    micros = number(row.get("event_timestamp"), "event_timestamp")
    if micros is None:
        raise InvalidInput("event_timestamp is missing (microseconds since 1970, as GA4 exports it)")
    ts = check_time_range(micros / 1e6, "event_timestamp")
    user = next((u for f in mapping["user_id_fields"] if (u := text(row.get(f))) is not None), None)
    out = Converted(ts=ts)
    if user is None and text(row.get("user_pseudo_id")) is None and text(row.get("user_id")) is None:
        # Consent mode's cookieless pings carry no id at all: nobody to recommend to, not an error.
        out.skipped = "rows without user_id or user_pseudo_id (consent mode's cookieless pings)"
        return out
    properties = user_properties(row.get("user_properties")) if mapping["user_properties"] and user else {}
    etype = mapping["events"].get(name)
    if etype is None:
        out.skipped = f"event {name} (not mapped)"
        if properties:  # a page_view of a signed-in user still says who they are
            out.users.append({"id": user, "attributes": properties})
        return out
    if user is None:
        out.skipped = f"no {' or '.join(mapping['user_id_fields'])} (connectors.ga4.user_id_fields)"
        return out
    entries = row.get("items")
    if entries is None or (hasattr(entries, "__len__") and len(entries) == 0):
        raise InvalidInput(f"the {name} event has no items: GA4 e-commerce events list their items in items[]")
    if not isinstance(entries, (list, tuple)):
        raise InvalidInput(f"items must be a list of records, got {type(entries).__name__}")
    out.users.append({"id": user, "attributes": properties})
    for item, entry in products(
            out, {"user_id": user, "type": etype, "ts": ts}, ((f"items[{n}]", e) for n, e in enumerate(entries)),
            lambda e: text(e.get("item_id")),
            "item_id is missing or (not set): the entry was not imported (the other items of the event were); send "
            "item_id with every item",
            lambda e, where: revenue(e, where) if etype == "purchase" else None):
        out.items.append({"id": item, "title": text(entry.get("item_name")),
                          "categories": [c for f in CATEGORY_FIELDS if (c := text(entry.get(f)))],
                          "attributes": attributes_from(entry, mapping["item_fields"])})
    return out


def revenue(entry: dict[str, Any], where: str) -> float | None:
    """What the entry earned: ``item_revenue``, else ``price`` × ``quantity`` (1 when absent)."""
    earned = number(entry.get("item_revenue"), f"{where}.item_revenue")
    if earned is not None:
        return earned
    price = number(entry.get("price"), f"{where}.price")
    quantity = number(entry.get("quantity"), f"{where}.quantity")
    return None if price is None else price * (1.0 if quantity is None else quantity)


def user_properties(values: Any) -> dict[str, Any]:
    """``user_properties`` as attributes: each key's string, integer or floating value."""
    out: dict[str, Any] = {}
    for entry in values if isinstance(values, (list, tuple)) else ():
        if not isinstance(entry, dict) or text(entry.get("key")) is None or not isinstance(entry.get("value"), dict):
            continue
        value = entry["value"]
        for kind in ("string_value", "int_value", "float_value", "double_value"):
            got = value.get(kind)
            if got is None:
                continue
            if kind == "int_value":
                try:
                    got = int(got)  # the JSON export writes int64 as text
                except (TypeError, ValueError):
                    continue
            elif kind != "string_value":
                try:
                    got = float(got)
                except (TypeError, ValueError):
                    continue
            out[str(entry["key"])] = got
            break
    return out

