"""JSON text from users (a ``filter`` query parameter, a configuration file), decoded strictly:
standard JSON only (no ``NaN`` or ``Infinity``; numbers that overflow a float are refused), nesting
bounded, and every failure an :class:`InvalidInput` naming the field."""

from __future__ import annotations

from typing import Any

import msgspec

from lodestar.errors import InvalidInput

MAX_DEPTH = 32  # far deeper than any filter or configuration needs


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of decoded JSON, stopping once it passes ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> Any:
    """``value`` when it nests at most ``limit`` levels of objects and arrays."""
    if _depth(value, limit) > limit:
        raise InvalidInput(f"{where}: nests more than {limit} levels deep", field=where)
    return value


def decode_json(text: str | bytes, where: str, limit: int = MAX_DEPTH) -> Any:
    """Decode ``text`` as strict JSON."""
    try:
        value = msgspec.json.decode(text)
    except RecursionError:
        raise InvalidInput(f"{where}: nests more than {limit} levels deep", field=where) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidInput(f"{where}: not valid JSON ({exc})", field=where) from None
    return check_depth(value, where, limit)
