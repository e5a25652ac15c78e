"""Segment-spec messages (Segment, RudderStack, Jitsu and every library that speaks Segment's spec), as
JSON lines in a file, or live through ``POST /v1/ingest/segment/batch`` (serving).

- ``track`` with the E-commerce Spec's events: single-product events (``Product Viewed``,
  ``Product Clicked``, ``Product Added``, ``Product Added to Wishlist``, ``Product Reviewed``) carry
  the product in ``properties`` (``product_id``, else ``sku``); multi-product events (``Order
  Completed``, ``Product List Viewed``) carry ``properties.products[]``, one Lodestar event each. An
  order's value per product is ``price`` × ``quantity``; a review's is ``properties.rating``.
  ``properties.recommendation_id`` and ``properties.ad_id``, when an app sends them, are kept.
- ``identify``: ``traits`` become the user's profile attributes (contact details left out, see
  ``connectors.segment.exclude_traits``).
- ``page``, ``screen``, ``group`` and ``alias`` carry no product: skipped.

The user is ``userId``, else ``anonymousId`` (unless ``connectors.segment.anonymous_users`` is
false); the time is ``timestamp``, else ``originalTimestamp``, else ``receivedAt``. A line holding a
whole batch (``{"batch": [...]}``, as Segment's archives store it) imports every message in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lodestar.connectors.importing import (
    Converted,
    Mapping,
    attributes_from,
    number,
    text,
)
from lodestar.connectors.importing import products as each_product
from lodestar.connectors.mapping import event_key
from lodestar.errors import InvalidInput
from lodestar.importer import Row, read_rows
from lodestar.records import _missing, parse_timestamp

ENTITY = "events"
SUFFIXES = (".jsonl", ".ndjson", ".json")
NO_PRODUCT = ("page", "screen", "group", "alias")


def read(path: Path, mapping: Mapping) -> Iterator[tuple[int, Row]]:
    rows = read_rows(path)

    def messages() -> Iterator[tuple[int, Row]]:
        for line, row in rows:
            if isinstance(row, dict) and isinstance(row.get("batch"), list):
                yield from ((line, m) if isinstance(m, dict) else (line, InvalidInput("a message must be an object", m))
                            for m in row["batch"])
            else:
                yield line, row

    return messages()


def convert(message: dict[str, Any], mapping: Mapping, default_ts: float | None = None) -> Converted:
    kind = text(message.get("type"))
    kind = kind.lower() if kind else None
    if kind not in ("track", "identify", *NO_PRODUCT):
        raise InvalidInput(f"type must be track, identify, page, screen, group or alias, got {message.get('type')!r}")
    ts = next((t for f in ("timestamp", "originalTimestamp", "receivedAt")
               if (t := parse_timestamp(message.get(f), f)) is not None), default_ts)
    if ts is None:
        raise InvalidInput("timestamp is missing (ISO 8601), and there is no originalTimestamp or receivedAt")
    out = Converted(ts=ts)
    if kind in NO_PRODUCT:
        out.skipped = f"{kind} messages (no product)"
        return out
    user = text(message.get("userId"))
    if user is None and mapping["anonymous_users"]:
        user = text(message.get("anonymousId"))
    if user is None:
        if text(message.get("anonymousId")) is None:
            raise InvalidInput("the message has neither userId nor anonymousId")
        out.skipped = "anonymous messages (connectors.segment.anonymous_users is false)"
        return out
    if kind == "identify":
        traits = message.get("traits")
        if traits is not None and not isinstance(traits, dict):
            raise InvalidInput(f"traits must be an object, got {type(traits).__name__}")
        excluded = {t.lower() for t in mapping["exclude_traits"]}
        out.users.append({"id": user, "attributes": {k: v for k, v in (traits or {}).items()
                                                     if k.lower() not in excluded and v is not None}})
        return out
    name = text(message.get("event"))
    if name is None:
        raise InvalidInput("a track message needs its event name in event")
    etype = mapping.events_by_key.get(event_key(name))
    if etype is None:
        out.skipped = f"track {name} (not mapped)"
        return out
    properties = message.get("properties") or {}
    if not isinstance(properties, dict):
        raise InvalidInput(f"properties must be an object, got {type(properties).__name__}")
    products = properties.get("products")
    if products is not None and not isinstance(products, list):
        raise InvalidInput(f"properties.products must be a list, got {type(products).__name__}")
    entries = [(f"properties.products[{n}]", p) for n, p in enumerate(products)] if products \
        else [("properties", properties)]
    rating = None
    if etype == "rating":
        rating = number(properties.get("rating"), "properties.rating")
        if rating is None:
            raise InvalidInput(f"{name} needs properties.rating (a number) to be a rating")
    out.users.append({"id": user, "attributes": {}})
    passed = {k: properties[k] for k in ("recommendation_id", "ad_id") if not _missing(properties.get(k))}
    def value(entry: dict[str, Any], where: str) -> float | None:
        price = number(entry.get("price"), f"{where}.price")
        quantity = number(entry.get("quantity"), f"{where}.quantity")
        if etype == "rating":
            return rating
        return price * (1.0 if quantity is None else quantity) if etype == "purchase" and price is not None else None

    missing = "product_id is missing (and there is no sku): " + (
        "the product was not imported (the order's others were)" if products
        else f"a {name} event names its product in properties.product_id")
    for item, entry in each_product(out, {"user_id": user, "type": etype, "ts": ts, **passed}, entries,
                                    lambda e: text(e.get("product_id")) or text(e.get("sku")), missing, value):
        category = text(entry.get("category"))
        out.items.append({"id": item, "title": text(entry.get("name")), "categories": [category] if category else [],
                          "attributes": attributes_from(entry, mapping["item_fields"])})
    return out
