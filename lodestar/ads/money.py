"""Money is integer micro-units of the tenant's currency (1 unit = 1,000,000 micros), never floats:
sums and comparisons are exact, so a budget is never overspent by a rounding error."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from lodestar.errors import InvalidInput

MICROS = 1_000_000
CENT = MICROS // 100
# ASCII digits only, at most a billion units: sums stay exact in every store (ArangoDB adds as doubles).
_AMOUNT = re.compile(r"^[0-9]{1,9}(\.[0-9]{1,6})?$")


def parse_money(value: object, field: str) -> int:
    """An amount (``"0.35"``, ``0.35`` or ``35`` currency units) as micros; negative, NaN, more than
    six decimals or absurd sizes are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidInput(f"{field}: an amount such as 0.35", field=field)
    text = str(value).strip() if not isinstance(value, float) else repr(value)
    if not _AMOUNT.match(text):
        raise InvalidInput(f"{field}: an amount of at most 6 decimals, such as 0.35 (got {value!r})", field=field)
    try:
        return int(Decimal(text) * MICROS)
    except InvalidOperation:
        raise InvalidInput(f"{field}: an amount such as 0.35 (got {value!r})", field=field) from None


def format_money(micros: int) -> str:
    """Micros as currency units with two decimals at least (``350000`` -> ``"0.35"``)."""
    whole, part = divmod(abs(micros), MICROS)
    digits = f"{part:06d}".rstrip("0").ljust(2, "0")
    return f"{'-' if micros < 0 else ''}{whole}.{digits}"


def item_price(item: dict[str, object] | None) -> float:
    """An item's ``price`` attribute (catalog record or index payload) in currency units; 0 without one."""
    price = ((item or {}).get("attributes") or {}).get("price")  # type: ignore[union-attr]
    return float(price) if isinstance(price, (int, float)) and not isinstance(price, bool) and price > 0 else 0.0


def revenue_of(event: dict[str, object], item: dict[str, object] | None) -> float:
    """What a purchase earned: its value, else the item's price, else 0 (a NaN value is none)."""
    value = event.get("value")
    if isinstance(value, (int, float)) and value == value and value > 0:  # NaN != NaN
        return float(value)
    return item_price(item)
