"""Adobe Experience Platform XDM ExperienceEvents as JSON lines (Adobe Analytics source data, the Web
SDK, dataset exports).

Each line is one ExperienceEvent: ``_id``, ``timestamp`` (ISO 8601), ``eventType``
(``commerce.productViews``, ``commerce.productListAdds``, ``commerce.purchases``, ...), the user's
identities in ``identityMap`` (namespace -> ``[{"id", "primary", "authenticatedState"}]``; Adobe
Analytics source data may carry the ECID in ``endUserIDs._experience.mcid.id`` instead), and
``productListItems`` (``SKU``, ``name``, ``priceTotal``, ``quantity``, ``currencyCode``,
``productCategories``).

The user is the identity of the namespace ``connectors.xdm.identity_namespace`` names, or the one
marked primary when it names none. A mapped event becomes one Lodestar event per entry of
``productListItems``; a purchase's value is the entry's ``priceTotal``, and an item's ``price``
attribute is ``priceTotal / quantity``.
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
from lodestar.records import parse_timestamp

ENTITY = "events"
SUFFIXES = (".jsonl", ".ndjson", ".json")


def read(path: Path, mapping: Mapping) -> Any:
    return read_rows(path)


def identity(row: dict[str, Any], namespace: str | None) -> str | None:
    """The user's id: of ``namespace`` in ``identityMap``, or the primary identity when ``None``."""
    identities = row.get("identityMap")
    if identities is not None and not isinstance(identities, dict):
        raise InvalidInput("identityMap must be an object of namespace to a list of identities")
    found: list[tuple[str, dict[str, Any]]] = [
        (ns, entry) for ns, entries in (identities or {}).items() if isinstance(entries, list)
        for entry in entries if isinstance(entry, dict) and text(entry.get("id")) is not None
    ]
    if namespace is not None:
        chosen = [entry for ns, entry in found if ns.lower() == namespace.lower()]
        if not chosen and namespace.upper() == "ECID":
            return _ecid(row)
        return text(chosen[0]["id"]) if chosen else None
    primary = [entry for _ns, entry in found if entry.get("primary") is True]
    if primary:
        return text(primary[0]["id"])
    return text(found[0][1]["id"]) if len(found) == 1 else _ecid(row) if not found else None


def _ecid(row: dict[str, Any]) -> str | None:
    """Adobe Analytics source data's ECID (``endUserIDs._experience.mcid.id``)."""
    node: Any = row.get("endUserIDs")
    for key in ("_experience", "mcid", "id"):
        node = node.get(key) if isinstance(node, dict) else None
    return text(node)


def convert(row: dict[str, Any], mapping: Mapping) -> Converted:
    name = text(row.get("eventType"))
    if name is None:
        raise InvalidInput("eventType is missing: is this an XDM ExperienceEvent?")
    ts = parse_timestamp(row.get("timestamp"), "timestamp")
    if ts is None:
        raise InvalidInput("timestamp is missing (ISO 8601, as XDM requires)")
    out = Converted(ts=ts)
    etype = mapping["events"].get(name)
    if etype is None:
        out.skipped = f"eventType {name} (not mapped)"
        return out
    namespace = mapping["identity_namespace"]
    user = identity(row, namespace)
    if user is None:
        raise InvalidInput(f"no identity of namespace {namespace} in identityMap" if namespace else
                           "no identity in identityMap is marked primary: mark one, or name the namespace that is the "
                           "user in connectors.xdm.identity_namespace (ECID, CRMID, ...)")
    entries = row.get("productListItems")
    if not entries:
        raise InvalidInput(f"the {name} event has no productListItems: commerce events list their products there")
    if not isinstance(entries, list):
        raise InvalidInput(f"productListItems must be a list, got {type(entries).__name__}")
    out.users.append({"id": user, "attributes": {}})
    def value(entry: dict[str, Any], where: str) -> float | None:
        total = number(entry.get("priceTotal"), f"{where}.priceTotal")
        number(entry.get("quantity"), f"{where}.quantity")  # checked: the item's price divides by it
        return total if etype == "purchase" else None

    for sku, entry in products(
            out, {"user_id": user, "type": etype, "ts": ts},
            ((f"productListItems[{n}]", e) for n, e in enumerate(entries)), lambda e: text(e.get("SKU")),
            "SKU is missing: the entry was not imported (the event's other products were); send SKU with every "
            "product", value):
        attributes = attributes_from(entry, mapping["item_fields"])
        total, quantity = number(entry.get("priceTotal"), "priceTotal"), number(entry.get("quantity"), "quantity")
        if total is not None and total > 0:
            attributes["price"] = round(total / quantity, 6) if quantity and quantity > 0 else total
        out.items.append({"id": sku, "title": text(entry.get("name")), "categories": categories(entry),
                          "attributes": attributes})
    return out


def categories(entry: dict[str, Any]) -> list[str]:
    """``productCategories[].categoryName`` (else ``categoryID``), in order, without repeats."""
    out: list[str] = []
    listed = entry.get("productCategories")
    for category in listed if isinstance(listed, list) else ():
        if isinstance(category, dict):
            name = text(category.get("categoryName")) or text(category.get("categoryID"))
            if name and name not in out:
                out.append(name)
    return out
