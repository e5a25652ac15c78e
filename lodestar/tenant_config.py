"""Per-tenant configuration: defaults merged with what the tenant stored, validated on write."""

from __future__ import annotations

import copy
from typing import Any

from lodestar.controls import parse_rules
from lodestar.errors import InvalidInput
from lodestar.records import EVENT_TYPES

DEFAULTS: dict[str, Any] = {
    # How much one event of each type says about a user's taste; negative means "less like this".
    # A rating's weight is scaled by value / 5.
    "event_weights": {
        "view": 1.0,
        "click": 2.0,
        "add_to_cart": 4.0,
        "purchase": 8.0,
        "rating": 4.0,
        "like": 4.0,
        "dislike": -4.0,
        "impression": 0.0,
    },
    # Older events count less: an event this many days older than the user's latest counts half.
    "recency_half_life_days": 30.0,
    # How many of a user's latest events shape their taste vector.
    "max_profile_events": 200,
    # The collaborative model (lodestar.collab).
    "collab": {
        "ease_max_items": 12000,  # above this, PureSVD factors replace the dense EASE matrix
        "ease_lambda": 200.0,
        "factors": 64,
        "recency_half_life_events": 5.0,  # the 5th-latest event counts half as much as the latest...
        "recency_floor": 0.1,  # ...and every event keeps at least this much (long-term taste)
        "candidates": 300,  # retrieved from the index, then re-ranked
    },
    # How the final ranking blends its signals (each scaled to [0, 1] over the candidates).
    # content_popularity: how much popularity counts next to similarity for users the
    # collaborative model does not know yet (content_profile and cold_start_profile).
    "ranking": {"collab": 1.0, "content": 0.1, "popularity": 0.0, "content_popularity": 2.0},
    # Profile attributes whose text describes a new user's taste (cold start).
    "profile_attributes": ["interests", "favorite_categories", "favorite_genres", "topics"],
    # Offline evaluation: held-out share per user, and how much worse (relative NDCG@10) a new
    # index version may be than the published one before publishing is blocked.
    # max_users: a deterministic sample of test users keeps evaluation time bounded on big tenants.
    "evaluation": {"test_fraction": 0.2, "max_regression": 0.05, "min_test_users": 20, "max_users": 5000},
    # Index builds: a new version starts from the published one and applies the changed items when
    # at most this share of the items changed (and the collaborative model did not); else full rebuild.
    "index": {"incremental_max_fraction": 0.1},
    # Merchandising rules (lodestar.controls): boost, bury, pin, each optionally timed.
    "rules": [],
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` overlaid on ``base``: objects merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def effective_config(stored: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults overlaid with a tenant's stored configuration."""
    return deep_merge(DEFAULTS, stored or {})


def _number(value: Any, where: str, minimum: float = 0.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise InvalidInput(f"{where} must be a number >= {minimum:g}")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a configuration a tenant admin wants to store; return it unchanged when valid."""
    if not isinstance(config, dict):
        raise InvalidInput("tenant configuration must be a JSON object")
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise InvalidInput(f"unknown configuration keys: {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    weights = config.get("event_weights", {})
    if not isinstance(weights, dict):
        raise InvalidInput("event_weights must be an object of event type to number")
    for etype, weight in weights.items():
        if etype not in EVENT_TYPES:
            raise InvalidInput(f"event_weights.{etype}: unknown event type; known: {', '.join(EVENT_TYPES)}")
        _number(weight, f"event_weights.{etype}", minimum=float("-inf"))
    if "recency_half_life_days" in config:
        _number(config["recency_half_life_days"], "recency_half_life_days", minimum=1e-9)
    max_events = config.get("max_profile_events", 1)
    if isinstance(max_events, bool) or not isinstance(max_events, int) or not 1 <= max_events <= 10000:
        raise InvalidInput("max_profile_events must be an integer between 1 and 10000")
    for section in ("collab", "ranking", "evaluation", "index"):
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise InvalidInput(f"{section} must be an object")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise InvalidInput(f"{section}.{key}: unknown key; known: {', '.join(DEFAULTS[section])}")
            _number(value, f"{section}.{key}")
    test_fraction = config.get("evaluation", {}).get("test_fraction", 0.2)
    if not 0 < test_fraction < 1:
        raise InvalidInput("evaluation.test_fraction must be between 0 and 1")
    if not 0 <= config.get("index", {}).get("incremental_max_fraction", 0.1) <= 1:
        raise InvalidInput("index.incremental_max_fraction must be between 0 and 1 (0: any change rebuilds in full)")
    parse_rules(config.get("rules", []))
    attributes = config.get("profile_attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise InvalidInput("profile_attributes must be a list of attribute names")
    return config
