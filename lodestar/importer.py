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
  there is guessed into a row.
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

    @property
    def rejected(self) -> int:
        return sum(e.rejected for e in self.entities)

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "entities": [asdict(e) for e in self.entities]}


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | InvalidInput]]:
    """Yield ``(line, row)`` for every data row of a file; a row that cannot even be parsed comes
    back as an :class:`InvalidInput` so that it is rejected, not lost."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet"
        )
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield line_no, InvalidInput(f"not valid JSON ({exc.msg} at column {exc.colno})", line.rstrip("\n"))
                    continue
                yield line_no, row if isinstance(row, dict) else InvalidInput("a line must be a JSON object", row)
    elif fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                if None in row:
                    yield reader.line_num, InvalidInput("the row has more fields than the header", row)
                    continue
                yield reader.line_num, row
    else:
        import pyarrow.parquet as pq

        line_no = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            for row in batch.to_pylist():
                line_no += 1
                yield line_no, row


def import_rows(
    store: CdpStore,
    tenant: str,
    entity: str,
    rows: Iterator[tuple[int, dict[str, Any] | InvalidInput]],
    reject_path: Path,
    source: str,
) -> EntitySummary:
    """Validate and store rows of one entity, committing every ``BATCH`` good rows."""
    parse = PARSERS[entity]
    summary = EntitySummary(entity=entity, source=source)
    good: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    reject_fh = None

    def flush() -> None:
        if good:
            write = {"items": store.upsert_items, "users": store.upsert_users, "events": store.append_events}[entity]
            summary.changed += write(tenant, good)
            good.clear()
            seen.clear()

    try:
        for line_no, row in rows:
            try:
                if isinstance(row, InvalidInput):
                    raise row
                record = parse(row)
            except InvalidInput as exc:
                if reject_fh is None:
                    reject_path.parent.mkdir(parents=True, exist_ok=True)
                    reject_fh = reject_path.open("w", encoding="utf-8")
                    summary.reject_file = str(reject_path)
                raw = row.row if isinstance(row, InvalidInput) else row
                reject_fh.write(json.dumps({"line": line_no, "reason": str(exc), "row": raw}, default=str) + "\n")
                summary.rejected += 1
                continue
            summary.accepted += 1
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
    """Import the given files (entity -> path); items first so that events can refer to them."""
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
    sources: list[tuple[str, Iterator[tuple[int, Any]], str]],
    progress: Callable[[str], None],
) -> ImportSummary:
    """Import ``(entity, rows, source)`` in order, writing rejects and ``summary.json`` under
    ``<data dir>/imports/<tenant>/<time>/``."""
    require_tenant(store, tenant)
    run_dir = settings.data_dir / "imports" / tenant / time.strftime("%Y%m%dT%H%M%S")
    summary = ImportSummary(tenant=tenant, directory=str(run_dir))
    for entity, rows, source in sources:
        result = import_rows(store, tenant, entity, rows, run_dir / f"{entity}.rejects.jsonl", source)
        summary.entities.append(result)
        progress(result.line())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    return summary


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
    movie_tags: dict[str, list[str]] = {}
    if tags.is_file():
        with tags.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                tag = (row.get("tag") or "").strip().lower()
                bucket = movie_tags.setdefault(row["movieId"], [])
                if tag and tag not in bucket:
                    bucket.append(tag)

    movie_ids: set[str] = set()

    def item_rows() -> Iterator[tuple[int, dict[str, Any]]]:
        with movies.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                movie_ids.add((row.get("movieId") or "").strip())
                genres = [g for g in (row.get("genres") or "").split("|") if g and g != "(no genres listed)"]
                yield reader.line_num, {
                    "id": row.get("movieId"),
                    "kind": "content",
                    "title": row.get("title"),
                    "categories": genres,
                    "tags": movie_tags.get(row.get("movieId") or "", [])[:20],
                }

    user_ids: dict[str, None] = {}

    def event_rows() -> Iterator[tuple[int, dict[str, Any] | InvalidInput]]:
        # Runs after item_rows(): a MovieLens directory is self-contained, so a rating of a movie
        # that movies.csv does not list is an error in the data, not a catalog still to come.
        with ratings.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                movie = (row.get("movieId") or "").strip()
                if movie and movie not in movie_ids:
                    yield reader.line_num, InvalidInput(f"movieId {movie} is not in movies.csv", row)
                    continue
                if row.get("userId"):
                    user_ids.setdefault(row["userId"], None)
                yield reader.line_num, {
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
