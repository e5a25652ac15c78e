"""The data model users write (ARCHITECTURE.md, "Data model"), validated row by row.

Each ``parse_*`` function takes one raw row (from JSONL, CSV or Parquet) and returns the normalized
record, or raises :class:`InvalidInput` whose message says what was wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any

from lodestar.errors import InvalidInput

ITEM_KINDS = ("product", "content")
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating", "like", "dislike", "impression")
MAX_ID_LENGTH = 256

# The time range an event or a catalog change may carry. Older than this is a unit mistake (epoch
# milliseconds read as seconds go the other way; 0 and small numbers are missing values in
# disguise); MovieLens, the oldest data set people commonly load, starts in 1996. Later than a day
# ahead is a clock or unit error: one future-dated event made every other event decay to nothing
# and one item the only popular one.
MIN_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
MAX_FUTURE_S = 86400.0
# Event values: finite, and small enough that weighting them can never overflow a float. A rating's
# value is on a scale whose top, lodestar.event_weights.RATING_SCALE (5), counts the full rating
# weight; up to twice that is accepted for 10-point scales.
MAX_EVENT_VALUE = 1e9
MAX_RATING = 10.0

# The fields each entity is stored with, in storage order: the CDP adapters and the pipeline's
# extracts all use these, so a new field is added here once.
ITEM_FIELDS = (
    "id", "kind", "title", "description", "categories", "tags", "attributes", "available",
    "deleted", "source_updated_at",
)
USER_FIELDS = ("id", "attributes", "deleted", "source_updated_at")
EVENT_FIELDS = ("id", "user_id", "item_id", "type", "value", "ts", "recommendation_id", "ad_id")
ENTITY_FIELDS: dict[str, tuple[str, ...]] = {"items": ITEM_FIELDS, "users": USER_FIELDS, "events": EVENT_FIELDS}

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", ""}


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def parse_id(value: Any, field: str = "id") -> str:
    """An identifier, the one rule for every id in files, bodies, query strings and paths: a
    non-empty string (integers are accepted and turned into strings) of at most ``MAX_ID_LENGTH``
    characters, surrounding white space removed, with no control character and nothing that is not
    valid UTF-8."""
    if _missing(value):
        raise InvalidInput(f"{field} is required", field=field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidInput(f"{field} must be a string, got {type(value).__name__}", field=field)
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidInput(f"{field} must be a string or an integer, got {value!r}", field=field)
        value = int(value)
    text = str(value)
    if len(text) > 4 * MAX_ID_LENGTH or len(text := text.strip()) > MAX_ID_LENGTH:
        raise InvalidInput(f"{field} is longer than {MAX_ID_LENGTH} characters", field=field)
    check_text(text, field)
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise InvalidInput(f"{field} must not contain control characters (such as NUL or a line break)", field=field)
    return text


def check_text(text: str, field: str) -> str:
    """``text`` when it is valid Unicode that UTF-8 can store: no lone surrogate (a JSON ``\\ud800``
    escape) and no replacement character standing for bytes that were not UTF-8."""
    if "\ufffd" in text:
        raise InvalidInput(f"{field} is not valid UTF-8 (it holds bytes that are not UTF-8 text)", field=field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} is not valid UTF-8 (it holds a lone surrogate such as \\ud800)",
                           field=field) from None
    return text


def finite_number(value: Any, field: str, limit: float | None = None) -> float:
    """A finite number (bools are not numbers), at most ``limit`` in absolute value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be a number", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"{field} must be a finite number, got {value!r}", field=field)
    if limit is not None and abs(number) > limit:
        raise InvalidInput(f"{field} must be between {-limit:g} and {limit:g}, got {value!r}", field=field)
    return number


def check_time_range(ts: float, field: str, now: float | None = None) -> float:
    """``ts`` (epoch seconds) when it lies between ``MIN_TIMESTAMP`` and a day from now."""
    latest = (time.time() if now is None else now) + MAX_FUTURE_S
    if not MIN_TIMESTAMP <= ts <= latest:
        when = datetime.fromtimestamp(min(max(ts, -6e10), 2.5e11), UTC).strftime("%Y-%m-%d") if math.isfinite(ts) else ts
        raise InvalidInput(f"{field} {when} is out of range: it must lie between 1990-01-01 and a day from now "
                           "(epoch seconds, not milliseconds)", field=field)
    return ts


def parse_timestamp(value: Any, field: str, bounded: bool = True) -> float | None:
    """ISO-8601 text or epoch seconds, returned as epoch seconds (UTC); ``None`` when absent.
    ``bounded``: the time must lie in the range events and catalog changes may carry
    (:func:`check_time_range`); always, it must be finite."""
    ts = _timestamp(value, field)
    if ts is not None:
        if not math.isfinite(ts):
            raise InvalidInput(f"{field} must be a finite time, got {value!r}", field=field)
        if bounded:
            check_time_range(ts, field)
    return ts


# The range of a schedule's times (experiments, line items): 1990-01-01 to 2100-01-01.
SCHEDULE_EARLIEST, SCHEDULE_LATEST = 631152000.0, 4102444800.0


def parse_schedule_time(value: Any, field: str) -> float | None:
    """A start or end of a schedule: ISO-8601 text or epoch seconds between 1990 and 2100 (future
    times allowed, unlike events'); ``None`` when absent."""
    ts = parse_timestamp(value, field, bounded=False)
    if ts is not None and not SCHEDULE_EARLIEST <= ts <= SCHEDULE_LATEST:
        raise InvalidInput(f"{field}: a time between 1990 and 2100", field=field)
    return ts


def _timestamp(value: Any, field: str) -> float | None:
    if _missing(value):
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp
        return _timestamp(value.to_pydatetime(), field)
    if isinstance(value, bool):
        raise InvalidInput(f"{field} must be ISO-8601 text or epoch seconds, got {value!r}", field=field)
    try:
        if isinstance(value, (int, float)):
            return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise InvalidInput(f"{field} must be a time in epoch seconds or ISO-8601, got a number far too large",
                           field=field) from None
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{field} {text!r} is not a timestamp: use ISO-8601 (2024-05-01T12:00:00Z) or epoch seconds", field=field
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def parse_bool(value: Any, field: str, default: bool) -> bool:
    if _missing(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"{field} must be true or false, got {value!r}", field=field)


def parse_str_list(value: Any, field: str) -> list[str]:
    """A list of strings; in CSV a ``|``-separated string."""
    if _missing(value):
        return []
    if isinstance(value, str):
        parts = value.split("|")
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        parts = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        raise InvalidInput(f"{field} must be a list of strings (in CSV: a|b|c), got {type(value).__name__}", field=field)
    out: list[str] = []
    for part in parts:
        if not isinstance(part, (str, int, float)) or isinstance(part, bool):
            raise InvalidInput(f"{field} must contain only strings, got {part!r}", field=field)
        text = str(part).strip()
        if text and text not in out:
            out.append(text)
    return out


def parse_attributes(value: Any, field: str = "attributes") -> dict[str, Any]:
    """An object of attributes; in CSV a JSON string."""
    if _missing(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{field} is not valid JSON ({exc.msg} at column {exc.colno})", field=field) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be an object such as {{\"price\": 9.5}}, got {type(value).__name__}", field=field)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} must hold only JSON values ({exc})", field=field) from None
    return value


def parse_item(row: dict[str, Any]) -> dict[str, Any]:
    kind = row.get("kind")
    kind = "product" if _missing(kind) else str(kind).strip().lower()
    if kind not in ITEM_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(ITEM_KINDS)}, got {row.get('kind')!r}", field="kind")
    return {
        "id": parse_id(row.get("id")),
        "kind": kind,
        "title": "" if _missing(row.get("title")) else str(row["title"]).strip(),
        "description": "" if _missing(row.get("description")) else str(row["description"]).strip(),
        "categories": parse_str_list(row.get("categories"), "categories"),
        "tags": parse_str_list(row.get("tags"), "tags"),
        "attributes": parse_attributes(row.get("attributes")),
        "available": parse_bool(row.get("available"), "available", default=True),
        "source_updated_at": parse_timestamp(row.get("updated_at"), "updated_at"),
        "deleted": parse_bool(row.get("deleted"), "deleted", default=False),
    }


def parse_user(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": parse_id(row.get("id")),
        "attributes": parse_attributes(row.get("attributes")),
        "source_updated_at": parse_timestamp(row.get("updated_at"), "updated_at"),
        "deleted": parse_bool(row.get("deleted"), "deleted", default=False),
    }


def parse_event(row: dict[str, Any], *, default_ts: float | None = None) -> dict[str, Any]:
    """An event. ``ts`` is required in imports (so a re-import is idempotent); the API may default it."""
    etype = row.get("type")
    etype = None if _missing(etype) else str(etype).strip().lower()
    if etype not in EVENT_TYPES:
        raise InvalidInput(f"type must be one of {', '.join(EVENT_TYPES)}, got {row.get('type')!r}", field="type")
    value = row.get("value")
    if _missing(value):
        value = None
    else:
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidInput(f"value must be a number, got {row.get('value')!r}", field="value") from None
        value = finite_number(value, "value", MAX_EVENT_VALUE)
        if etype == "rating" and not 0.0 <= value <= MAX_RATING:
            raise InvalidInput(f"value must be between 0 and {MAX_RATING:g} for a rating, got {row.get('value')!r}",
                               field="value")
    if etype == "rating" and value is None:
        raise InvalidInput("a rating event needs a numeric value (for example 4.5)", field="value")
    ts = parse_timestamp(row.get("ts"), "ts", bounded=False)
    if ts is not None:
        check_time_range(ts, "ts")
    if ts is None:
        if default_ts is None:
            raise InvalidInput("ts is required (ISO-8601 or epoch seconds) so that a re-import stays idempotent", field="ts")
        ts = default_ts
    rec_id, ad_id = row.get("recommendation_id"), row.get("ad_id")
    event = {
        "user_id": parse_id(row.get("user_id"), "user_id"),
        "item_id": parse_id(row.get("item_id"), "item_id"),
        "type": etype,
        "value": value,
        "ts": ts,
        "recommendation_id": None if _missing(rec_id) else parse_id(rec_id, "recommendation_id"),
        "ad_id": None if _missing(ad_id) else parse_id(ad_id, "ad_id"),  # the sponsored item's (lodestar.ads)
    }
    event["id"] = event_id(event)
    return event


def event_id(event: dict[str, Any]) -> str:
    """Deterministic id of an event, so importing the same event twice stores it once."""
    key = f"{event['user_id']}\x1f{event['item_id']}\x1f{event['type']}\x1f{event['ts']!r}"
    return hashlib.sha1(key.encode()).hexdigest()


PREFERENCE_KEYS = ("liked_items", "disliked_items", "liked_categories", "disliked_categories")


def parse_preferences(raw: Any) -> dict[str, list[str]]:
    """A user's stated preferences: lists of item ids and category names (up to 1000 each)."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"preferences must be an object with {', '.join(PREFERENCE_KEYS)}", field="preferences")
    unknown = set(raw) - set(PREFERENCE_KEYS)
    if unknown:
        raise InvalidInput(f"{sorted(unknown)[0]}: unknown field; use {', '.join(PREFERENCE_KEYS)}", field=f"{sorted(unknown)[0]}")
    out = {}
    for key in PREFERENCE_KEYS:
        values = raw.get(key, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            raise InvalidInput(f"{key}: must be a list of non-empty strings", field=key)
        if len(values) > 1000:
            raise InvalidInput(f"{key}: at most 1000 values", field=key)
        # Item ids and category names follow the one id rule (length, characters).
        out[key] = list(dict.fromkeys(parse_id(v, f"{key}[{n}]") for n, v in enumerate(values)))
    return out
