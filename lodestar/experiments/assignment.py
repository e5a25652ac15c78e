"""Which variant a unit (a user id, or a session id) sees: a pure function of the experiment's name
and the unit id, so the same unit always sees the same variant, on every serving process.

Two independent hashes into ``BUCKETS`` buckets. The first decides whether the unit is in the
experiment at all (bucket below ``traffic`` x BUCKETS): raising the traffic share from 10% to 20%
keeps every unit that was in and adds the next ones; lowering it takes out only the last ones.
The second places the unit in a variant by the variants' cumulative weights: moving weight from
one variant to the next moves only the units between the old and the new boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BUCKETS = 10_000


def bucket(salt: str, unit: str) -> int:
    """The unit's bucket (0 to 9,999) for ``salt``: the first 8 bytes of SHA-256, modulo BUCKETS."""
    digest = hashlib.sha256(f"{salt}\x00{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(experiment: str, unit: str, weights: Sequence[float], traffic: float = 1.0) -> int | None:
    """The index of the variant ``unit`` sees in ``experiment`` (weights in the variants' order,
    summing to 1), or ``None`` when the unit is outside the experiment's traffic share."""
    if bucket(f"{experiment}:traffic", unit) >= round(traffic * BUCKETS):
        return None
    spot, edge = bucket(f"{experiment}:variant", unit), 0.0
    for index, weight in enumerate(weights):
        edge += weight * BUCKETS
        if spot < round(edge):
            return index
    return len(weights) - 1
