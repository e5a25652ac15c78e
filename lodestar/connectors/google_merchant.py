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
_PRICE = re.compile(r"^\s*([0-9][0-9.,]*)\s*([A-Za-z]{3})?\s*$")
_CHUNK = 64 * 1024


def read(path: Path, mapping: Mapping) -> Iterator[tuple[int, Row]]:
    if path.suffix.lower() not in SUFFIXES:
        raise InvalidInput(f"{path}: a product feed is .tsv, .txt (tab-separated) or .xml, not {path.suffix!r}")
    _require_text(path, "csv")
    if path.suffix.lower() == ".xml":
        _check_prolog(path)
        return _xml_rows(path)
    return ((line, _named(row) if isinstance(row, dict) else row) for line, row in _csv_rows(path, delimiter="\t"))


def _named(row: dict[Any, Any]) -> dict[Any, Any]:
    """Header names as the specification writes them: ``g:Image Link`` is ``image_link``."""
    return {(_name(k) if isinstance(k, str) else k): v for k, v in row.items()}


def _name(name: str) -> str:
    name = name.strip().lower()
    return (name[2:] if name.startswith("g:") else name).replace(" ", "_")


G_NAMESPACE = "{http://base.google.com/ns/1.0}"


class _Products:
    """A parser target that builds each ``<item>``/``<entry>`` on its own (nothing else of the feed is
    kept, so memory holds one product, not the feed) and hands it over with the line it starts on."""

    def __init__(self) -> None:
        self.parser: DefusedXMLParser | None = None
        self.started_root = False
        self.stack: list[ET.Element] = []  # the product being built, and its open children
        self.line = 0
        self.done: list[tuple[int, ET.Element]] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        self.started_root = True
        if self.stack:
            element = ET.SubElement(self.stack[-1], tag, attrs)
            self.stack.append(element)
        elif tag.rsplit("}", 1)[-1] in ("item", "entry"):
            assert self.parser is not None
            self.line = self.parser.parser.CurrentLineNumber
            self.stack.append(ET.Element(tag, attrs))

    def end(self, tag: str) -> None:
        if self.stack:
            element = self.stack.pop()
            if not self.stack:
                self.done.append((self.line, element))

    def data(self, text: str) -> None:
        if self.stack:
            element = self.stack[-1]
            if len(element):  # text after a child element: the tail of that child
                element[-1].tail = (element[-1].tail or "") + text
            else:
                element.text = (element.text or "") + text

    def close(self) -> None:
        return None


def _parser() -> tuple[DefusedXMLParser, _Products]:
    target = _Products()
    parser = DefusedXMLParser(target=target, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    target.parser = parser
    return parser, target


def _check_prolog(path: Path) -> None:
    """Refuse a feed that declares entities before anything is imported: a document type
    declaration can only come before the root element, so reading up to it is enough."""
    parser, target = _parser()
    with path.open("rb") as fh:
        while not target.started_root and (chunk := fh.read(_CHUNK)):
            try:
                parser.feed(chunk)
            except DefusedXmlException as exc:
                raise InvalidInput(f"{path} was refused: {exc} (a product feed needs no entities; entity "
                                   "expansion is how a small XML file takes gigabytes of memory)") from None
            except ET.ParseError:
                return  # malformed: the import reports it at its line


def _xml_rows(path: Path) -> Iterator[tuple[int, Row]]:
    parser, builder = _parser()
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
    """Each finished product as a row of attribute name to text. An attribute in the ``g:`` namespace
    wins over a plain element of the same name (an Atom entry has its own ``<id>`` and ``<title>``
    beside ``<g:id>`` and ``<g:title>``); Atom's ``<summary>`` is the description when there is none,
    and its ``<link href>`` the link."""
    done, builder.done = builder.done, []
    for line, element in done:
        row: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for child in element:
            local = child.tag.rsplit("}", 1)[-1]
            name = _name(local)
            if len(child):
                value: Any = {_name(c.tag.rsplit("}", 1)[-1]): (c.text or "").strip() for c in child}
            elif local == "link" and child.get("href"):
                value = child.get("href")
            else:
                value = (child.text or "").strip()
            target = row if child.tag.startswith(G_NAMESPACE) else plain
            if name in target:  # a repeated attribute (additional_image_link, ...): a list
                target[name] = (target[name] if isinstance(target[name], list) else [target[name]]) + [value]
            else:
                target[name] = value
        if "summary" in plain and "description" not in plain:
            plain["description"] = plain.pop("summary")
        yield line, {**plain, **row}


def price(value: Any, where: str) -> tuple[float, str | None] | None:
    """``"15.00 USD"`` as (15.0, "USD"). A comma is the decimal mark when it is the last separator and
    has one or two digits after it (``15,00 EUR``, ``1.299,00 EUR``); a separator with three digits
    after it and no decimal mark (``1,000 USD``) is refused as ambiguous rather than guessed."""
    raw = text(value)
    if raw is None:
        return None
    match = _PRICE.match(raw)
    if match is None:
        raise InvalidInput(f"{where} {raw!r} is not a price: write the amount and its ISO 4217 currency, e.g. "
                           "15.00 USD")
    amount = match.group(1)
    last = max(amount.rfind("."), amount.rfind(","))
    if last >= 0 and len(amount) - last - 1 == 3 and (amount.count(".") + amount.count(",")) == 1:
        raise InvalidInput(f"{where} {raw!r} is ambiguous (a thousands separator or a decimal mark?): write "
                           "it with a decimal point and no thousands separator, e.g. 1000.00 USD")
    if last >= 0 and len(amount) - last - 1 not in (1, 2):
        raise InvalidInput(f"{where} {raw!r} is not a price: the decimal part has one or two digits, e.g. "
                           "1000.00 USD")
    whole, fraction = (amount[:last], amount[last + 1:]) if last >= 0 else (amount, "")
    groups, marks = re.split(r"[.,]", whole), set(re.findall(r"[.,]", whole))
    if len(groups) > 1 and (len(marks) > 1 or amount[last] in marks or not 1 <= len(groups[0]) <= 3
                            or any(len(g) != 3 for g in groups[1:])):
        raise InvalidInput(f"{where} {raw!r} is not a price: thousands are grouped by three (1,299.00 USD), "
                           "or better not grouped at all (1299.00 USD)")
    digits = "".join(groups)
    if not digits.isdigit():
        raise InvalidInput(f"{where} {raw!r} is not a price: write the amount and its currency, e.g. 15.00 USD")
    return float(f"{digits}.{fraction or '0'}"), (match.group(2) or "").upper() or None


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
    attributes = attributes_from(row, {k: v for k, v in mapping["attributes"].items() if k not in ("price", "sale_price")})
    if mapping["attributes"].get("sale_price") and text(row.get("sale_price")):
        attributes[mapping["attributes"]["sale_price"]] = row["sale_price"]  # a price: parsed below
    amount = price(row.get("price"), "price")
    if amount is not None:
        attributes["price"] = amount[0]
        if amount[1]:
            attributes["currency"] = amount[1]
    sale_name = mapping["attributes"].get("sale_price")
    if sale_name and sale_name in attributes:
        sale = price(attributes[sale_name], "sale_price")
        attributes[sale_name] = sale[0] if sale else None
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
