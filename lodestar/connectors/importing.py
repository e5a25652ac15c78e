"""Importing a source format. Each connector (``ga4``, ``xdm``, ``segment``, ``google_merchant``)
turns one source row into events, the item fields those events carry and the user profile fields
they carry (:class:`Converted`); this module feeds them to the same validation, reject files and
idempotent upserts as every other import (:mod:`lodestar.importer`).

What the event formats carry besides events is merged, not replaced:

- **Item fields seen in events fill catalog gaps.** An item the catalog lacks is created from them
  (``kind: product``); an item it has gets only its empty fields filled (no title, no categories, an
  attribute it lacks). A product feed or a canonical items file stays the authority.
- **Profile fields** (GA4 user properties, Segment identify traits) are laid over the user's stored
  attributes, the latest value of each winning.
- **Rows that are not about items** (a GA4 ``page_view``, a Segment ``page`` call, an event name the
  mapping does not list or maps to ``null``) are skipped and counted by reason in the summary; they
  are not errors.

The mapping is the tenant's ``connectors`` configuration (:mod:`lodestar.connectors.mapping`).
"""

from __future__ import annotations

import importlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lodestar.cdp import CdpStore, require_tenant
from lodestar.connectors.mapping import CONFIG_KEYS, FORMATS, event_key
from lodestar.errors import InvalidInput
from lodestar.importer import ImportSummary, Row, _run_import
from lodestar.records import _missing, parse_event, parse_user
from lodestar.settings import Settings
from lodestar.tenant_config import effective_config

NOT_SET = "(not set)"  # GA4's and Adobe's text for a field the site never filled
NUMERIC_ATTRIBUTES = frozenset({"price"})  # kept as a number whatever the source wrote ("4.50")


@dataclass
class Converted:
    """What one source row holds, in Lodestar's import format."""

    events: list[dict[str, Any]] = field(default_factory=list)
    items: list[dict[str, Any]] = field(default_factory=list)  # {"id", "title", "categories", "attributes"}
    users: list[dict[str, Any]] = field(default_factory=list)  # {"id", "attributes"}
    problems: list[str] = field(default_factory=list)  # parts of the row that were refused, and why
    skipped: str | None = None  # why the row as a whole holds nothing to import (not an error)
    ts: float | None = None  # the row's time: later rows' item and profile fields win


@dataclass
class Mapping:
    """A connector's mapping for one tenant: its section of ``connectors``, defaults overlaid."""

    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @cached_property
    def events_by_key(self) -> dict[str, str | None]:
        """The event map keyed as Segment names are matched (:func:`mapping.event_key`), made once
        per import or request rather than once per row; a later entry wins over an earlier one
        that matches alike (a tenant's own spelling over the default's)."""
        return {event_key(name): etype for name, etype in self.values["events"].items()}


def mapping_for(store: CdpStore, tenant: str, fmt: str) -> Mapping:
    record = store.get_tenant(tenant)
    return Mapping(effective_config(record["config"] if record else None).connectors[CONFIG_KEYS[fmt]])


def connector(fmt: str) -> Any:
    """The module of a format (``google-merchant`` is ``google_merchant``)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; connectors: {', '.join(FORMATS)}")
    return importlib.import_module(f"lodestar.connectors.{CONFIG_KEYS[fmt]}")


def source_files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The file, or a directory's files with one of ``suffixes`` (sorted, as a sharded export is
    named: ``events_20250101.parquet``, ...); an :class:`InvalidInput` when there is none."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise InvalidInput(f"{path} holds no {' or '.join(suffixes)} file")
        return files
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file or directory")
    return [path]


def import_source(
    store: CdpStore,
    settings: Settings,
    tenant: str,
    fmt: str,
    path: Path,
    progress: Callable[[str], None] = lambda _msg: None,
) -> list[ImportSummary]:
    """Import a file (or every file of a directory) in a source format; one summary and reject
    directory per file. Every file is checked before any row is imported."""
    module = connector(fmt)
    require_tenant(store, tenant)
    files = source_files(Path(path), module.SUFFIXES)
    mapping = mapping_for(store, tenant, fmt)
    opened = [(f, module.read(f, mapping)) for f in files]  # raises for a file that cannot be read at all
    summaries = []
    for f, rows in opened:
        if len(files) > 1:
            progress(f"{f.name}:")
        summaries.append(import_rows(store, settings, tenant, module, mapping, rows, str(f), progress))
    return summaries


def import_rows(
    store: CdpStore,
    settings: Settings,
    tenant: str,
    module: Any,
    mapping: Mapping,
    rows: Iterator[tuple[int, Row]],
    source: str,
    progress: Callable[[str], None],
) -> ImportSummary:
    """Convert and import one source's rows: a catalog feed's items, or an event format's events,
    then the item fields and profiles those events carried."""
    skipped: Counter[str] = Counter()
    items = Gathered()
    users = Gathered()

    def converted() -> Iterator[tuple[int, Row, Converted]]:
        for line, raw in rows:
            if isinstance(raw, InvalidInput):
                yield line, raw, Converted()
                continue
            try:
                result = convert(module, raw, mapping)
            except InvalidInput as exc:
                yield line, InvalidInput(str(exc), raw), Converted()
                continue
            if result.skipped:
                skipped[result.skipped] += 1
            yield line, raw, result

    if module.ENTITY == "items":
        def catalog_rows() -> Iterator[tuple[int, Row]]:
            for line, raw, result in converted():
                if isinstance(raw, InvalidInput):
                    yield line, raw
                yield from ((line, InvalidInput(p, raw)) for p in result.problems)
                yield from ((line, item) for item in result.items)

        sources = [("items", catalog_rows(), source)]
    else:
        def event_rows() -> Iterator[tuple[int, Row]]:
            for line, raw, result in converted():
                if isinstance(raw, InvalidInput):
                    yield line, raw
                    continue
                checked = validated(result)
                yield from ((line, InvalidInput(str(p), raw)) for p in checked.refused)
                yield from ((line, event) for event in checked.events)
                items.add(line, result.ts, checked.items)
                users.add(line, result.ts, checked.users)

        sources = [
            ("events", event_rows(), source),
            ("items", fill_catalog_gaps(store, tenant, items), f"{source} (item fields in its events)"),
            ("users", merge_profiles(store, tenant, users), f"{source} (users of its events)"),
        ]
    summary = _run_import(store, settings, tenant, sources, progress)
    if skipped:
        summary.skipped = dict(skipped.most_common())
        progress("skipped, not errors: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common(5))
                 + (f" and {len(skipped) - 5} more reasons (summary.json)" if len(skipped) > 5 else ""))
        (Path(summary.directory) / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def convert(module: Any, raw: Any, mapping: Mapping, **options: Any) -> Converted:
    """``module.convert``, with a row whose values have the wrong types for the format (a number where
    a list belongs, say) refused as that row's error instead of ending the import."""
    if not isinstance(raw, dict):
        raise InvalidInput("a row must be a JSON object")
    try:
        return module.convert(raw, mapping, **options)
    except InvalidInput:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        raise InvalidInput(f"the row does not have the shape of a {module.__name__.rsplit('.', 1)[-1]} row "
                           f"({type(exc).__name__}: {exc}); check it against the format's specification") from None


@dataclass
class Checked:
    """A converted row's events as the import and ``POST /v1/events`` check them, and the item and
    profile fields worth keeping: those of its valid events' items, and its users when an event is
    valid or they carry profile fields."""

    events: list[dict[str, Any]]
    refused: list[InvalidInput]
    items: list[dict[str, Any]]
    users: list[dict[str, Any]]


def validated(result: Converted, default_ts: float | None = None) -> Checked:
    """Check a converted row. Entries of one row that are the same event (one product twice in an
    order: same user, item, type and time, so the same event id) become one event whose value is
    their sum, instead of the last silently replacing the others."""
    out = Checked([], [InvalidInput(p) for p in result.problems], [], [])
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in result.events:
        try:
            parse_event(event, default_ts=default_ts)
        except InvalidInput as exc:
            out.refused.append(InvalidInput(f"item {event.get('item_id')!r}: {exc}"))
            continue
        key = (event["user_id"], event["item_id"], event["type"], event.get("ts"))
        if key in merged:
            kept = merged[key]
            if event.get("value") is not None and kept.get("type") == "purchase":
                kept["value"] = (kept.get("value") or 0.0) + event["value"]
            continue
        merged[key] = dict(event)
    out.events = list(merged.values())
    valid_items = {e["item_id"] for e in out.events}
    out.items = [i for i in result.items if i["id"] in valid_items]
    for user in result.users:
        if not out.events and not user.get("attributes"):
            continue
        try:
            parse_user(user)
        except InvalidInput as exc:
            out.refused.append(InvalidInput(f"the user's profile was not stored: {exc}"))
            continue
        out.users.append(user)
    return out


class Gathered:
    """Item or profile fields seen in events, by id: per field, the value of the latest row."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, Any]] = {}
        self.attributes: dict[str, dict[str, Any]] = {}
        self._when: dict[tuple[str, str], float] = {}
        self.lines: dict[str, int] = {}
        self.latest: dict[str, float | None] = {}
        self.created: set[str] = set()  # ids fill_catalog_gaps made new items of

    def add(self, line: int, ts: float | None, records: Iterable[dict[str, Any]]) -> None:
        when = ts if ts is not None else float("-inf")
        for record in records:
            ident = record["id"]
            if ident not in self.lines:
                self.lines[ident] = line
                self.fields[ident], self.attributes[ident] = {}, {}
            if ts is not None and (self.latest.get(ident) or float("-inf")) < ts:
                self.latest[ident] = ts
            self._keep(ident, self.fields[ident], "", {k: v for k, v in record.items()
                                                         if k not in ("id", "attributes") and v not in (None, "", [])},
                       when)
            self._keep(ident, self.attributes[ident], "attributes.", record.get("attributes") or {}, when)

    def _keep(self, ident: str, kept: dict[str, Any], prefix: str, values: dict[str, Any], when: float) -> None:
        """Each value of ``values`` unless a later row already gave that field one."""
        for name, value in values.items():
            if value is None:
                continue
            key = (ident, prefix + name)
            if name not in kept or self._when[key] <= when:
                kept[name], self._when[key] = value, when


def fill_catalog_gaps(store: CdpStore, tenant: str, seen: Gathered) -> Iterator[tuple[int, Row]]:
    """Item rows for the items events named: new items from the fields seen, stored items with only
    their empty fields filled. Nothing is yielded for an item the fields add nothing to, nor for one
    the catalog deleted (a tombstone is not a gap)."""
    deleted = store.deleted_ids(tenant, "items", list(seen.fields))
    for ident, fields in seen.fields.items():
        if ident in deleted:
            continue
        attributes = seen.attributes[ident]
        stored = store.get_item(tenant, ident)
        if stored is None:
            seen.created.add(ident)
            yield seen.lines[ident], {"id": ident, "kind": "product", **fields, "attributes": attributes,
                                      "updated_at": seen.latest.get(ident)}
            continue
        row = {"id": ident, "kind": stored["kind"], "title": stored.get("title"),
               "description": stored.get("description"), "categories": stored.get("categories") or [],
               "tags": stored.get("tags") or [], "attributes": dict(stored.get("attributes") or {}),
               "available": stored.get("available", True), "updated_at": stored.get("source_updated_at")}
        before = json.dumps(row, sort_keys=True, default=str)
        for name, value in fields.items():
            if _missing(row.get(name)) or row.get(name) == []:
                row[name] = value
        for name, value in attributes.items():
            row["attributes"].setdefault(name, value)
        if json.dumps(row, sort_keys=True, default=str) != before:
            yield seen.lines[ident], row


def merge_profiles(store: CdpStore, tenant: str, seen: Gathered) -> Iterator[tuple[int, Row]]:
    """User rows for the users of the events: profile fields seen laid over the stored attributes,
    stamped with the time of the latest row they came from. A stored profile stamped later than
    that keeps its values and gets only the fields it lacks (an old export imported after a newer
    one does not undo it); an erased user is not brought back. Nothing is yielded for a stored user
    the fields change nothing of."""
    deleted = store.deleted_ids(tenant, "users", list(seen.attributes))
    for ident, attributes in seen.attributes.items():
        if ident in deleted:
            continue
        latest = seen.latest.get(ident)
        stored = store.get_user(tenant, ident)
        if stored is None:
            yield seen.lines[ident], {"id": ident, "attributes": attributes, "updated_at": latest}
            continue
        kept = stored.get("attributes") or {}
        stamp = stored.get("source_updated_at")
        newer = stamp is None or (latest is not None and latest >= stamp)
        merged = {**kept, **attributes} if newer else {**attributes, **kept}
        when = max((t for t in (stamp, latest) if t is not None), default=None)
        if merged != kept or when != stamp:
            yield seen.lines[ident], {"id": ident, "attributes": merged, "updated_at": when}


# -- helpers the connectors share ---------------------------------------------------------------
def products(out: Converted, event: dict[str, Any], entries: Iterable[tuple[str, Any]],
             ident: Callable[[dict[str, Any]], str | None], missing: str,
             value: Callable[[dict[str, Any], str], float | None]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The product entries of an event row (``(where, entry)``, ``where`` as ``items[1]``): for each
    that is an object with an id (``ident``) and a readable ``value(entry, where)``, one event is
    added to ``out``, ``event`` (the row's user, type and time) with the item and value, and
    ``(item id, entry)`` is handed back for the item's fields. An entry that is not an object, lacks
    an id (``missing`` says what to send) or has an unreadable value becomes one of the row's
    problems; the row's other products still import."""
    for where, entry in entries:
        if not isinstance(entry, dict):
            out.problems.append(f"{where} must be an object, got {type(entry).__name__}")
            continue
        item = ident(entry)
        if item is None:
            out.problems.append(f"{where}.{missing}")
            continue
        try:
            worth = value(entry, where)
        except InvalidInput as exc:
            out.problems.append(str(exc))
            continue
        out.events.append({**event, "item_id": item, "value": worth})
        yield item, entry


def text(value: Any) -> str | None:
    """A source field as text, or ``None`` when it is missing or the source's "(not set)"."""
    if type(value) is str:  # the common case first: this runs for every field of every row
        out = value.strip()
        return out if out and out != NOT_SET else None
    if value is None or isinstance(value, (dict, list, tuple, bool)) or (isinstance(value, float) and value != value):
        return None
    out = str(value).strip()
    return out if out and out != NOT_SET else None


def number(value: Any, where: str) -> float | None:
    """A source number (GA4's NDJSON export writes int64 as text), ``None`` when missing."""
    if _missing(value):
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{where} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{where} must be a number, got {value!r}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise InvalidInput(f"{where} must be a finite number, got {value!r}")
    return out


def attributes_from(source: dict[str, Any], fields: dict[str, str | None]) -> dict[str, Any]:
    """The source fields ``fields`` names (source name -> attribute name, ``None``: left out)."""
    out: dict[str, Any] = {}
    for name, attribute in fields.items():
        if attribute is None:
            continue
        value = source.get(name)
        if isinstance(value, str):
            value = text(value)
        if attribute in NUMERIC_ATTRIBUTES and value is not None:
            try:  # a price written as text ("4.50") is still a price (item_price reads numbers only)
                value = number(value, name)
            except InvalidInput:
                value = None
        if value is not None and not isinstance(value, (dict, list)):
            out[attribute] = value
    return out
