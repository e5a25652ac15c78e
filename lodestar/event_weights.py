"""How much one event says about a user's taste: the single definition of an event's weight.

An event weighs its type's weight from the tenant configuration (``event_weights``; a dislike is
negative); a rating's weight is scaled by ``value / RATING_SCALE``, so a 5-star rating counts the
full rating weight and a 1-star rating a fifth of it. Features, the collaborative model and
request-time ranking all weigh events through these two functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

RATING = "rating"
RATING_SCALE = 5.0  # the top of the rating scale: a rating of 5 counts the whole rating weight


def event_weight(event_type: str, value: Any, weights: Mapping[str, float]) -> float:
    """The taste weight of one event."""
    weight = float(weights.get(event_type, 0.0))
    if event_type == RATING and value is not None:
        weight *= float(value) / RATING_SCALE
    return weight


def event_weights(events: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    """The taste weight of every event of a frame (columns ``type`` and ``value``), vectorized."""
    base = events["type"].map(dict(weights)).fillna(0.0).to_numpy(dtype=float)
    is_rating = (events["type"] == RATING).to_numpy()
    values = events["value"].fillna(RATING_SCALE).to_numpy(dtype=float)
    return np.where(is_rating, base * values / RATING_SCALE, base)
