"""Import items, users and events into the CDP store from JSONL, CSV or Parquet files.

Good rows are committed in batches; every rejected row goes to a reject file with its line and
reason, next to a summary; nothing is dropped silently. A re-import upserts by id, so it is
idempotent (events are keyed by a hash of user, item, type and timestamp). Each import writes to a
directory of its own, ``<data dir>/imports/<tenant>/<UTC time to the microsecond>/``.

Hostile files, decided here once for every format:

- A file that cannot be read at all is an :class:`InvalidInput` raised before any row of any file
  is imported: an unknown extension, a missing file, a Parquet file that pyarrow cannot open, and a
  JSONL or CSV file that is plainly not text: it starts with the signature of gzip, ZIP (``.xlsx``
  too), Parquet or a UTF-16/32 byte-order mark, or holds a NUL byte in its first 64 KiB (UTF-8 text
  never does).
- Otherwise a text file is read line by line. Bytes that are not UTF-8 make their row a reject
  (line and byte), and the rest of the file still imports; a UTF-8 byte-order mark is skipped.
- Any string in a row, field names included, that UTF-8 cannot store (a lone surrogate such as the
  JSON escape ``"\\ud800"``) rejects that row.
- A CSV quote that is never closed makes the row where it opens, and every line after it, a reject
  (one per line, with its number): past that point the row boundaries cannot be trusted, so nothing
  there is guessed into a row. A single line the csv module cannot read (a field longer than its
  limit) is a reject of its own.
- A Parquet row group that cannot be decoded makes each of its rows not yet read a reject.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from lodestar import records
from lodestar.cdp import CdpStore, require_tenant
from lodestar.errors import InvalidInput
from lodestar.settings import Settings
from lodestar.tenant_config import effective_config

BATCH = 5000
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}

PARSERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "items": records.parse_item,
    "users": records.parse_user,
    "events": records.parse_event,
}


@dataclass
class EntitySummary:
    entity: str
    source: str
    accepted: int = 0
    rejected: int = 0
    changed: int = 0
    reject_file: str | None = None

    def line(self) -> str:
        text = f"{self.entity}: {self.accepted} accepted ({self.changed} new or changed), {self.rejected} rejected"
        if self.rejected:
            text += f" -> see {self.reject_file}"
        return text


@dataclass
class ImportSummary:
    tenant: str
    directory: str
    entities: list[EntitySummary] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # source rows with nothing to import, by reason (connectors)

    @property
    def accepted(self) -> int:
        return sum(e.accepted for e in self.entities)

    @property
    def rejected(self) -> int:
        return sum(e.rejected for e in self.entities)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant": self.tenant, "entities": [asdict(e) for e in self.entities]}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


Row = dict[str, Any] | InvalidInput

# What a file that is not text most often turns out to be, by its first bytes, and what to do.
_NOT_TEXT = (
    (b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one): unzip it, or save the sheet as CSV"),
    (b"PAR1", "a Parquet file: give it the extension .parquet"),
    (b"\xff\xfe", "UTF-16 or UTF-32 text: save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text: save it as UTF-8"),
)
_SNIFF_BYTES = 64 * 1024


def read_rows(path: Path, columns: tuple[str, ...] | None = None) -> Iterator[tuple[int, Row]]:
    """``(line, row)`` for every data row of a file; a row that cannot even be parsed comes back as
    an :class:`InvalidInput` so that it is rejected, not lost. ``columns``: of a Parquet file, read
    only those (the ones it has); a connector needs a few columns of a wide export.

    The file is checked when this is called, not when the first row is read: a file that cannot be
    read at all raises :class:`InvalidInput` here, before anything is imported."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet"
        )
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if fmt == "parquet":
        return _parquet_rows(_open_parquet(path), columns)
    _require_text(path, fmt)
    return _jsonl_rows(path) if fmt == "jsonl" else _csv_rows(path)


def _require_text(path: Path, fmt: str) -> None:
    """Refuse a .jsonl or .csv file that is plainly not text, saying what it looks like instead."""
    expected = "UTF-8 text, one JSON object per line" if fmt == "jsonl" else "UTF-8 text with a header line"
    try:
        with path.open("rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InvalidInput(f"{path} cannot be read ({exc.strerror})") from None
    for signature, what in _NOT_TEXT:
        if head.startswith(signature):
            raise InvalidInput(f"{path} is {what}; a {path.suffix} file must be {expected}")
    if b"\x00" in head:
        raise InvalidInput(
            f"{path} is not a text file (it holds NUL bytes); a {path.suffix} file must be {expected}: "
            "export the data again in that form, or as .parquet"
        )


def _shown(text: str) -> str:
    """A line for a reject file: undecodable bytes (kept as surrogate escapes) shown as ``\\xe9``."""
    return text.rstrip("\r\n").encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    # surrogateescape: a byte that is not UTF-8 costs its line, not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if not line.isascii():
                try:
                    line.encode("utf-8")
                except UnicodeEncodeError as exc:
                    byte = ord(line[exc.start]) - 0xDC00
                    yield line_no, InvalidInput(
                        f"the line is not UTF-8 text (byte 0x{byte:02x} at column {exc.start + 1}): "
                        "save the file as UTF-8",
                        _shown(line),
                    )
                    continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # an error's column is then on this line
            except json.JSONDecodeError as exc:
                yield line_no, InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})", line.rstrip("\n"))
                continue
            except ValueError as exc:  # an integer of thousands of digits (Python's conversion limit)
                yield line_no, InvalidInput(f"not usable JSON ({exc})", line.rstrip("\n")[:1000])
                continue
            yield line_no, row if isinstance(row, dict) else InvalidInput("a line must be a JSON object", row)


class _NumberedLines:
    """A text file's lines as the csv module pulls them, numbered; remembers the lines of the row
    being read, and whether the file ended while the csv module was still reading that row (it was
    inside a quoted field that never closed)."""

    def __init__(self, fh: IO[str]) -> None:
        self._fh = fh
        self.line_no = 0
        self.row_lines: list[tuple[int, str]] = []
        self.ended_in_row = False

    def __iter__(self) -> _NumberedLines:
        return self

    def __next__(self) -> str:
        try:
            line = next(self._fh)
        except StopIteration:
            self.ended_in_row = True
            raise
        self.line_no += 1
        self.row_lines.append((self.line_no, line))
        return line

    def next_row(self) -> None:
        self.row_lines = []
        self.ended_in_row = False


def _csv_rows(path: Path, delimiter: str = ",") -> Iterator[tuple[int, Row]]:
    """Rows of a CSV file with a header line, each numbered by the line it starts on (``delimiter``
    ``"\\t"``: a tab-separated file)."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        lines = _NumberedLines(fh)
        reader = csv.reader(lines, delimiter=delimiter)
        header: list[str] | None = None
        while True:
            lines.next_row()
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # in practice a field longer than csv.field_size_limit()
                if len(lines.row_lines) == 1 and header is not None:
                    # Within one line the row boundaries are sure; the csv module goes on at the next line.
                    line_no, text = lines.row_lines[0]
                    yield line_no, InvalidInput(f"the row on this line cannot be read ({exc}): shorten that field",
                                                _shown(text))
                    continue
                yield from _unreadable_rest(lines, f"the row that starts on this line cannot be read ({exc}), most "
                                                   "likely because a quote opened in it is never closed")
                return
            if lines.ended_in_row:
                yield from _unreadable_rest(lines, "a quoted field opens in the row that starts on this line and is "
                                                   "never closed (the file ends inside it)")
                return
            if not values:
                continue
            line_no = lines.row_lines[0][0]
            if header is None:
                header = values
                continue
            row: dict[Any, Any] = dict(zip(header, values, strict=False))  # ragged rows: handled below
            if len(values) > len(header):
                row[None] = values[len(header):]
                yield line_no, InvalidInput("the row has more fields than the header", row)
                continue
            row.update((name, None) for name in header[len(values):])
            yield line_no, row


def _unreadable_rest(lines: _NumberedLines, reason: str) -> Iterator[tuple[int, InvalidInput]]:
    """Reject the row being read and every line after it, one reject per line: past an unclosed
    quote the row boundaries are unknown, so no line is guessed into a row."""
    first: int | None = None
    for line_no, text in itertools.chain(lines.row_lines, ((lines.line_no, text) for text in lines)):
        if not text.strip():
            continue
        if first is None:
            first = line_no
            message = (f"{reason}, so this line and every line after it were not imported: close the quote "
                       '(a quote inside a quoted field is written twice, "") and import these lines again')
        else:
            message = f"not imported: it follows the quote left open on line {first}"
        yield line_no, InvalidInput(message, _shown(text))


def _open_parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(
            f"{path} is not a readable Parquet file ({exc}); write it again as Parquet, or give the rows "
            "as .jsonl or .csv"
        ) from None


def _parquet_rows(parquet: Any, columns: tuple[str, ...] | None = None) -> Iterator[tuple[int, Row]]:
    """Rows numbered from 1, read one row group at a time so that a group that cannot be decoded
    costs only its own rows, each rejected."""
    import pyarrow as pa

    chosen = None if columns is None else [c for c in parquet.schema_arrow.names if c in columns]
    before = 0
    try:
        for group in range(parquet.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            read = 0
            try:
                for batch in parquet.iter_batches(batch_size=BATCH, row_groups=[group], columns=chosen):
                    for row in batch.to_pylist():
                        read += 1
                        yield before + read, row
            except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
                for n in range(read + 1, size + 1):
                    yield before + n, InvalidInput(
                        f"row group {group + 1} of the file cannot be decoded ({exc}): write the file again"
                    )
            before += size
    finally:
        parquet.close()


def _not_utf8(value: Any, where: str = "") -> str | None:
    """Why ``value`` (a row, or anything in one) holds a string UTF-8 cannot store, or ``None``.

    Such a string is a lone surrogate: a JSON ``\\ud800`` escape, or in CSV a byte that was not
    UTF-8 (kept as a surrogate escape, U+DC80 to U+DCFF, so that its row alone is rejected)."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            code, at = ord(value[exc.start]), exc.start + 1
            if 0xDC80 <= code <= 0xDCFF:
                return (f"{where or 'the value'} is not UTF-8 text (byte 0x{code - 0xDC00:02x} at character {at}): "
                        "save the file as UTF-8")
            return (f"{where or 'the value'} holds the lone surrogate \\u{code:04x} at character {at}, half of "
                    "a UTF-16 pair and not a character: correct the value (a JSON escape of a character "
                    "beyond U+FFFF needs both halves, such as \\ud83d\\ude00)")
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _not_utf8(key, f"a field name in {where}" if where else "a field name")
            if problem is None:
                problem = _not_utf8(item, f"{where}.{key}" if where else str(key))
            if problem is not None:
                return problem
    elif isinstance(value, (list, tuple)):
        for n, item in enumerate(value):
            if (problem := _not_utf8(item, f"{where}[{n}]")) is not None:
                return problem
    return None


def import_rows(
    store: CdpStore,
    tenant: str,
    entity: str,
    rows: Iterator[tuple[int, Row]],
    reject_path: Path,
    source: str,
) -> EntitySummary:
    """Validate and store rows of one entity, committing every ``BATCH`` good rows. New items past
    the tenant's item quota (``quotas.items``) are rejected, each with the reason; updates of items
    already in the catalog always pass."""
    parse = PARSERS[entity]
    summary = EntitySummary(entity=entity, source=source)
    good: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    lines: dict[str, tuple[int, Row]] = {}  # id -> where the kept row came from (for quota rejects)
    reject_fh = None
    item_quota = 0
    if entity == "items":
        record = store.get_tenant(tenant)
        item_quota = effective_config(record["config"] if record else None).quotas.items

    def reject(line_no: int, reason: str, raw: Any) -> None:
        nonlocal reject_fh
        if reject_fh is None:
            reject_path.parent.mkdir(parents=True, exist_ok=True)
            reject_fh = reject_path.open("w", encoding="utf-8")
            summary.reject_file = str(reject_path)
        reject_fh.write(json.dumps({"line": line_no, "reason": reason, "row": raw}, default=str) + "\n")
        summary.rejected += 1

    def over_quota() -> None:
        """Drop (as rejects) the new items of the batch that do not fit the quota."""
        new = [r for r in good if store.get_item(tenant, r["id"]) is None]
        room = max(item_quota - store.count(tenant, "items"), 0)
        for record in new[room:]:
            line_no, raw = lines[record["id"]]
            reject(line_no, f"tenant {tenant!r} has reached its quota of {item_quota} items (quotas.items, set by "
                            "the operator): this new item was not imported; remove items or ask the operator to "
                            "raise the quota", raw)
            summary.accepted -= 1
        if len(new) > room:
            dropped = {r["id"] for r in new[room:]}
            good[:] = [r for r in good if r["id"] not in dropped]

    def flush() -> None:
        if good and item_quota > 0:
            over_quota()
        if good:
            write = {"items": store.upsert_items, "users": store.upsert_users, "events": store.append_events}[entity]
            summary.changed += write(tenant, good)
            good.clear()
            seen.clear()
            lines.clear()

    try:
        for line_no, row in rows:
            try:
                if isinstance(row, InvalidInput):
                    raise row
                if (problem := _not_utf8(row)) is not None:
                    raise InvalidInput(problem)
                record = parse(row)
            except InvalidInput as exc:
                reject(line_no, str(exc), row.row if isinstance(row, InvalidInput) else row)
                continue
            summary.accepted += 1
            lines[record["id"]] = (line_no, row)
            # The last occurrence of an id in a file wins, as it would in separate imports.
            if record["id"] in seen:
                good[seen[record["id"]]] = record
            else:
                seen[record["id"]] = len(good)
                good.append(record)
            if len(good) >= BATCH:
                flush()
        flush()
    finally:
        if reject_fh is not None:
            reject_fh.close()
    return summary


def import_files(
    store: CdpStore,
    settings: Settings,
    tenant: str,
    files: dict[str, Path],
    progress: Callable[[str], None] = lambda _msg: None,
) -> ImportSummary:
    """Import the given files (entity -> path); items first so that events can refer to them. Every
    file is checked before any row is imported (:func:`read_rows`)."""
    require_tenant(store, tenant)
    sources = [
        (entity, read_rows(Path(files[entity])), str(files[entity]))
        for entity in ("items", "users", "events")
        if files.get(entity) is not None
    ]
    return _run_import(store, settings, tenant, sources, progress)


def _run_import(
    store: CdpStore,
    settings: Settings,
    tenant: str,
    sources: list[tuple[str, Iterator[tuple[int, Row]], str]],
    progress: Callable[[str], None],
) -> ImportSummary:
    """Import ``(entity, rows, source)`` in order, writing rejects and ``summary.json`` under
    ``<data dir>/imports/<tenant>/<time>/``."""
    require_tenant(store, tenant)
    run_dir = _new_run_dir(settings, tenant)
    summary = ImportSummary(tenant=tenant, directory=str(run_dir))
    for entity, rows, source in sources:
        result = import_rows(store, tenant, entity, rows, run_dir / f"{entity}.rejects.jsonl", source)
        summary.entities.append(result)
        progress(result.line())
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


def _new_run_dir(settings: Settings, tenant: str) -> Path:
    """A directory of this import's own, named by UTC time to the microsecond so that imports sort
    by time. It is created exclusively, with a counter on a clash, so that two imports at the same
    moment (two processes, say) never write each other's reject files or summary."""
    parent = settings.data_dir / "imports" / tenant
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for attempt in itertools.count(1):
        run_dir = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise AssertionError("unreachable")


def import_movielens(
    store: CdpStore,
    settings: Settings,
    tenant: str,
    directory: Path,
    progress: Callable[[str], None] = lambda _msg: None,
) -> ImportSummary:
    """Read a MovieLens directory: movies (genres as categories, tags as tags) are items, ratings are
    ``rating`` events, and every rating user becomes a user."""
    directory = Path(directory)
    movies, ratings, tags = directory / "movies.csv", directory / "ratings.csv", directory / "tags.csv"
    for required in (movies, ratings):
        if not required.is_file():
            raise InvalidInput(f"{directory} is not a MovieLens directory: {required.name} is missing")
    movie_rows, rating_rows = read_rows(movies), read_rows(ratings)
    movie_tags: dict[str, list[str]] = {}
    if tags.is_file():
        unreadable = 0
        for _line, row in read_rows(tags):
            if isinstance(row, InvalidInput) or None in row:
                unreadable += 1
                continue
            tag = (row.get("tag") or "").strip().lower()
            bucket = movie_tags.setdefault(row.get("movieId") or "", [])
            if tag and tag not in bucket:
                bucket.append(tag)
        if unreadable:  # tags only decorate items, so they are not worth failing the import for
            progress(f"tags: {unreadable} lines of {tags} could not be read and were skipped")

    movie_ids: set[str] = set()

    def item_rows() -> Iterator[tuple[int, Row]]:
        for line_no, row in movie_rows:
            if isinstance(row, InvalidInput):
                yield line_no, row
                continue
            movie_ids.add((row.get("movieId") or "").strip())
            genres = [g for g in (row.get("genres") or "").split("|") if g and g != "(no genres listed)"]
            yield line_no, {
                "id": row.get("movieId"),
                "kind": "content",
                "title": row.get("title"),
                "categories": genres,
                "tags": movie_tags.get(row.get("movieId") or "", [])[:20],
            }

    user_ids: dict[str, None] = {}

    def event_rows() -> Iterator[tuple[int, Row]]:
        # Runs after item_rows(): a MovieLens directory is self-contained, so a rating of a movie
        # that movies.csv does not list is an error in the data, not a catalog still to come.
        for line_no, row in rating_rows:
            if isinstance(row, InvalidInput):
                yield line_no, row
                continue
            movie = (row.get("movieId") or "").strip()
            if movie and movie not in movie_ids:
                yield line_no, InvalidInput(f"movieId {movie} is not in movies.csv", row)
                continue
            if row.get("userId") and _not_utf8(row["userId"]) is None:
                user_ids.setdefault(row["userId"], None)
            yield line_no, {
                "user_id": row.get("userId"),
                "item_id": row.get("movieId"),
                "type": "rating",
                "value": row.get("rating"),
                "ts": row.get("timestamp"),
            }

    def user_rows() -> Iterator[tuple[int, dict[str, Any]]]:
        # Runs after event_rows() is exhausted, so every rating user is known.
        yield from ((i + 1, {"id": uid}) for i, uid in enumerate(user_ids))

    return _run_import(
        store,
        settings,
        tenant,
        [("items", item_rows(), str(movies)), ("events", event_rows(), str(ratings)), ("users", user_rows(), str(ratings))],
        progress,
    )
