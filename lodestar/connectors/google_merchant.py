"""Google Merchant Center product feeds: tab-separated text (``.tsv``, ``.txt``) with a header line of
attribute names, or XML (RSS 2.0 ``<item>``s or Atom ``<entry>``s, the attributes in the
``http://base.google.com/ns/1.0`` namespace as ``g:id``, ``g:price``, ...).

Each product becomes an item: ``id``, ``title`` (both required, as the specification requires
them), ``description``; ``product_type``'s levels (``Home > Kitchen > Knives``) as categories, else
``google_product_category``'s; ``availability`` (``in_stock``, ``out_of_stock``, ``preorder``,
``backorder``; spaces for underscores as older feeds write them) as whether it is available; and
``price`` (``15.00 USD``) as the ``price`` and ``currency`` attributes. The attributes
``connectors.google_merchant.attributes`` names are kept too.

XML is parsed by ``defusedxml``: a feed that declares entities is refused (entity expansion is how an
XML file of a few kilobytes takes gigabytes of memory).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from lodestar.connectors.importing import Converted, Mapping, attributes_from, text
from lodestar.errors import InvalidInput
from lodestar.importer import Row, _csv_rows, _require_text

ENTITY = "items"
SUFFIXES = (".tsv", ".txt", ".xml")
AVAILABILITY = {"in_stock": True, "out_of_stock": False, "preorder": True, "backorder": True}
_PRICE = re.compile(r"^\s*([0-9]+(?:[.,][0-9]+)?)\s*([A-Za-z]{3})?\s*$")
_CHUNK = 64 * 1024


def read(path: Path, mapping: Mapping) -> Iterator[tuple[int, Row]]:
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInput(f"{path}: a product feed is .tsv, .txt (tab-separated) or .xml, not {path.suffix!r}")
    _require_text(path, "csv")
    if path.suffix.lower() == ".xml":
        return _xml_rows(path)
    return ((line, _named(row) if isinstance(row, dict) else row) for line, row in _csv_rows(path, delimiter="\t"))


def _named(row: dict[Any, Any]) -> dict[Any, Any]:
    """Header names as the specification writes them: ``g:Image Link`` is ``image_link``."""
    return {(_name(k) if isinstance(k, str) else k): v for k, v in row.items()}


def _name(name: str) -> str:
    name = name.strip().lower()
    return (name[2:] if name.startswith("g:") else name).replace(" ", "_")


class _Products(ET.TreeBuilder):
    """Builds each ``<item>``/``<entry>`` and hands it over with the line it starts on."""

    def __init__(self) -> None:
        super().__init__()
        self.parser: DefusedXMLParser | None = None
        self.depth = 0
        self.product_depth: int | None = None
        self.started: int = 0
        self.done: list[tuple[int, ET.Element]] = []

    def start(self, tag: str, attrs: dict[str, str]) -> ET.Element:
        self.depth += 1
        local = tag.rsplit("}", 1)[-1]
        if self.product_depth is None and local in ("item", "entry"):
            self.product_depth = self.depth
            assert self.parser is not None
            self.started = self.parser.parser.CurrentLineNumber
        return super().start(tag, attrs)

    def end(self, tag: str) -> ET.Element:
        element = super().end(tag)
        if self.product_depth == self.depth:
            self.done.append((self.started, element))
            self.product_depth = None
        self.depth -= 1
        return element


def _xml_rows(path: Path) -> Iterator[tuple[int, Row]]:
    builder = _Products()
    parser = DefusedXMLParser(target=builder, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    builder.parser = parser
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            try:
                parser.feed(chunk)
            except DefusedXmlException as exc:
                raise InvalidInput(f"{path} was refused: {exc} (a product feed needs no entities)") from None
            except ET.ParseError as exc:
                yield from _drain(builder)
                line = exc.position[0]
                yield line, InvalidInput(f"the XML is not well-formed here ({exc}), so nothing from this line on was "
                                         "imported: correct the feed and import it again (a re-import is safe)")
                return
            yield from _drain(builder)
        try:
            parser.close()
        except ET.ParseError as exc:
            yield from _drain(builder)
            yield exc.position[0], InvalidInput(f"the XML ends before it is complete ({exc}): the products after "
                                                "the last complete one were not imported")
            return
        yield from _drain(builder)


def _drain(builder: _Products) -> Iterator[tuple[int, Row]]:
    done, builder.done = builder.done, []
    for line, element in done:
        row: dict[str, Any] = {}
        for child in element:
            name = _name(child.tag.rsplit("}", 1)[-1])
            value = (child.text or "").strip() if len(child) == 0 else \
                {_name(c.tag.rsplit("}", 1)[-1]): (c.text or "").strip() for c in child}
            if name in row:  # a repeated attribute (additional_image_link, ...): a list
                row[name] = (row[name] if isinstance(row[name], list) else [row[name]]) + [value]
            else:
                row[name] = value
        yield line, row


def price(value: Any, where: str) -> tuple[float, str | None] | None:
    """``"15.00 USD"`` (or ``"15,00 EUR"``, or a bare number) as (amount, currency)."""
    raw = text(value)
    if raw is None:
        return None
    match = _PRICE.match(raw)
    if match is None:
        raise InvalidInput(f"{where} {raw!r} is not a price: write the amount and its ISO 4217 currency, e.g. "
                           "15.00 USD")
    return float(match.group(1).replace(",", ".")), (match.group(2) or "").upper() or None


def convert(row: dict[str, Any], mapping: Mapping) -> Converted:
    ident = text(row.get("id"))
    if ident is None:
        raise InvalidInput("id is missing: every product of a feed needs its id")
    title = text(row.get("title"))
    if title is None:
        raise InvalidInput(f"product {ident} has no title: the product data specification requires one")
    availability = text(row.get("availability"))
    available = True
    if availability is not None:
        key = availability.lower().replace(" ", "_")
        if key not in AVAILABILITY:
            raise InvalidInput(f"availability {availability!r} is not one of in_stock, out_of_stock, preorder, "
                               "backorder")
        available = AVAILABILITY[key]
    attributes = attributes_from(row, {k: v for k, v in mapping["attributes"].items() if k not in ("price",)})
    amount = price(row.get("price"), "price")
    if amount is not None:
        attributes["price"] = amount[0]
        if amount[1]:
            attributes["currency"] = amount[1]
    if "sale_price" in attributes:
        sale = price(attributes["sale_price"], "sale_price")
        attributes["sale_price"] = sale[0] if sale else None
    categories: list[str] = []
    for source in mapping["categories_from"]:
        value = row.get(source)
        path = text(value[0] if isinstance(value, list) and value else value)  # repeated: the first
        if path and not path.isdigit():  # google_product_category may be a numeric taxonomy id
            categories = list(dict.fromkeys(level.strip() for level in path.split(">") if level.strip()))
            break
    return Converted(items=[{"id": ident, "kind": "product", "title": title,
                             "description": text(row.get("description")) or "", "categories": categories,
                             "attributes": {k: v for k, v in attributes.items() if v is not None},
                             "available": available}])
