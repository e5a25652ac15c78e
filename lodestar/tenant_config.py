"""Per-tenant configuration: one typed object, its defaults written once (the dataclass fields below).

Tenants store a partial JSON object; :func:`effective_config` overlays it on the defaults and returns
a frozen :class:`TenantConfig`. :func:`validate_config` checks what a tenant admin wants to store.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lodestar.connectors.mapping import DEFAULTS as CONNECTOR_DEFAULTS
from lodestar.connectors.mapping import validate as validate_connectors
from lodestar.controls import Rule, parse_rules
from lodestar.errors import InvalidInput
from lodestar.jsonvalues import check_depth
from lodestar.records import EVENT_TYPES
from lodestar.segments import Segment, parse_segments

# How much one event of each type says about a user's taste; negative means "less like this".
# A rating's weight is scaled by value / 5 (lodestar.event_weights).
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "purchase": 8.0,
    "rating": 4.0,
    "like": 4.0,
    "dislike": -4.0,
    "impression": 0.0,
}


@dataclass(frozen=True)
class CollabSettings:
    """The collaborative model (lodestar.collab)."""

    ease_max_items: int = 12000  # above this, PureSVD factors replace the dense EASE matrix
    ease_lambda: float = 200.0
    factors: int = 64
    recency_half_life_events: float = 5.0  # the 5th-latest event counts half as much as the latest...
    recency_floor: float = 0.1  # ...and every event keeps at least this much (long-term taste)
    candidates: int = 300  # retrieved from the index, then re-ranked


@dataclass(frozen=True)
class RankingSettings:
    """How the final ranking blends its signals (each scaled to [0, 1] over the candidates).
    ``content_popularity``: how much popularity counts next to similarity for users the
    collaborative model does not know yet (content_profile and cold_start_profile)."""

    collab: float = 1.0
    content: float = 0.1
    popularity: float = 0.0
    content_popularity: float = 2.0


@dataclass(frozen=True)
class EvaluationSettings:
    """Offline evaluation: held-out share per user, and how much worse (relative NDCG@10) a new index
    version may be than the published one before publishing is blocked. ``max_users``: a
    deterministic sample of test users keeps evaluation time bounded on big tenants."""

    test_fraction: float = 0.2
    max_regression: float = 0.05
    min_test_users: int = 20
    max_users: int = 5000


@dataclass(frozen=True)
class IndexSettings:
    """Index builds: a new version starts from the published one and applies the changed items when
    at most this share of the items changed (and the collaborative model did not); else a full rebuild."""

    incremental_max_fraction: float = 0.1


@dataclass(frozen=True)
class QuotaSettings:
    """What a tenant may use, set by the operator; 0 means no limit (the default). Past a limit the
    API answers 429 with ``Retry-After`` (serving.quotas) and an import rejects the rows beyond it.

    ``requests_per_second``: every request of the tenant's keys together; ``key_requests_per_second``:
    each API key alone; ``concurrent_requests``: the tenant's requests being worked on at once (so
    that a rate's burst cannot occupy the server); ``events_per_day``: events the API accepts per UTC
    day; ``items``: the size the catalog may reach (new items past it are rejected; updates of
    existing items never are)."""

    requests_per_second: float = 0.0
    key_requests_per_second: float = 0.0
    concurrent_requests: int = 0
    events_per_day: int = 0
    items: int = 0


@dataclass(frozen=True)
class AdsSettings:
    """Retail media (lodestar.ads): off until the tenant turns it on; then the auction's reserve price
    (currency units per click) and relevance floor, the list positions sponsored items may take (the
    ad load), how long repeated clicks on one served ad count as one, and how conversions are
    attributed to ad clicks (window in days; by the same ``product``, ``brand`` or ``category``; and,
    when ``view_through_days`` is above 0, to ad impressions without a click)."""

    enabled: bool = False
    reserve: float = 0.01
    relevance_floor: float = 0.1
    positions: tuple[int, ...] = (1, 5)
    click_window_s: int = 1800
    attribution_days: int = 7
    attribution_scope: str = "product"
    view_through_days: int = 0  # 0: conversions after an ad impression alone are not attributed
    audience_min_size: int = 100  # an advertiser sees a segment's size only from this many members
    auction: str = "second_price"  # or "first_price" (lodestar.ads.bidding says what each implies)


ATTRIBUTION_SCOPES = ("product", "brand", "category")
ADS_INT_LIMITS = {"click_window_s": 7 * 86400, "attribution_days": 90, "view_through_days": 30,
                  "audience_min_size": 1_000_000}


def _ads(values: Any) -> None:
    if not isinstance(values, dict):
        raise InvalidInput("ads must be an object", field="ads")
    known = {f.name for f in dataclasses.fields(AdsSettings)}
    for key, value in values.items():
        where = f"ads.{key}"
        if key not in known:
            raise InvalidInput(f"{where}: unknown key; known: {', '.join(sorted(known))}", field=where)
        if key == "enabled" and not isinstance(value, bool):
            raise InvalidInput(f"{where}: true or false", field=where)
        if key == "positions" and (not isinstance(value, list) or len(value) > 10 or len(set(value)) != len(value)
                                   or any(isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 100
                                          for p in value)):
            raise InvalidInput(f"{where}: up to 10 distinct list positions from 1 to 100, e.g. [1, 5]", field=where)
        if key in ADS_INT_LIMITS and (isinstance(value, bool) or not isinstance(value, int)
                                                              or not 0 <= value <= ADS_INT_LIMITS[key]):
            raise InvalidInput(f"{where}: a whole number from 0 to {ADS_INT_LIMITS[key]}", field=where)
        if key == "reserve" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and 0.000001 <= value <= 1000):
            raise InvalidInput(f"{where}: a price per click from 0.000001 to 1000", field=where)
        if key == "attribution_scope" and value not in ATTRIBUTION_SCOPES:
            raise InvalidInput(f"{where}: one of {', '.join(ATTRIBUTION_SCOPES)}", field=where)
        if key == "auction" and value not in ("second_price", "first_price"):
            raise InvalidInput(f"{where}: second_price or first_price", field=where)
        if key == "relevance_floor":
            _number(value, where)
    if values.get("relevance_floor", 0) > 1:
        raise InvalidInput("ads.relevance_floor: a relevance from 0 to 1", field="ads.relevance_floor")


def _ads_settings(values: dict[str, Any]) -> AdsSettings:
    known = {f.name for f in dataclasses.fields(AdsSettings)}
    chosen = {k: v for k, v in values.items() if k in known}  # a key of a later release is ignored
    if "positions" in chosen:
        chosen["positions"] = tuple(chosen["positions"])
    return AdsSettings(**chosen)


SECTIONS: dict[str, type] = {
    "collab": CollabSettings, "ranking": RankingSettings, "evaluation": EvaluationSettings, "index": IndexSettings,
    "quotas": QuotaSettings,
}


@dataclass(frozen=True)
class TenantConfig:
    """A tenant's effective configuration (defaults overlaid with what the tenant stored)."""

    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    # Older events count less: an event this many days older than the user's latest counts half.
    recency_half_life_days: float = 30.0
    # How many of a user's latest events shape their taste vector.
    max_profile_events: int = 200
    collab: CollabSettings = field(default_factory=CollabSettings)
    ranking: RankingSettings = field(default_factory=RankingSettings)
    # Profile attributes whose text describes a new user's taste (cold start).
    profile_attributes: tuple[str, ...] = ("interests", "favorite_categories", "favorite_genres", "topics")
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    quotas: QuotaSettings = field(default_factory=QuotaSettings)
    # Merchandising rules as stored (lodestar.controls): boost, bury, pin, each optionally timed.
    rules: tuple[dict[str, Any], ...] = ()
    # The diversity (0 to 1, lodestar.controls) of a request that does not ask for one.
    diversity: float = 0.0
    ads: AdsSettings = field(default_factory=AdsSettings)
    # Audience segments as stored (lodestar.segments): rule and lookalike definitions.
    segments: tuple[dict[str, Any], ...] = ()
    # How each source format maps to Lodestar's data (lodestar.connectors.mapping), defaults overlaid.
    connectors: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(CONNECTOR_DEFAULTS))

    @cached_property
    def parsed_segments(self) -> tuple[Segment, ...]:
        return tuple(parse_segments(list(self.segments)))

    @cached_property
    def parsed_rules(self) -> tuple[Rule, ...]:
        """The rules, validated once per configuration object."""
        return tuple(parse_rules(list(self.rules)))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (for fingerprints and for showing the configuration)."""
        out = dataclasses.asdict(self)
        out["profile_attributes"] = list(self.profile_attributes)
        out["rules"] = [copy.deepcopy(r) for r in self.rules]
        out["segments"] = [copy.deepcopy(r) for r in self.segments]
        out["ads"]["positions"] = list(self.ads.positions)
        out["connectors"] = copy.deepcopy(self.connectors)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantConfig:
        """A configuration from a complete (defaults already overlaid) dict."""
        def section(name: str) -> Any:
            kind = SECTIONS[name]
            values = data[name]
            return kind(**{f.name: _as(f.type, values[f.name]) for f in dataclasses.fields(kind)})

        return cls(
            event_weights={k: float(v) for k, v in data["event_weights"].items()},
            recency_half_life_days=float(data["recency_half_life_days"]),
            max_profile_events=int(data["max_profile_events"]),
            collab=section("collab"),
            ranking=section("ranking"),
            profile_attributes=tuple(data["profile_attributes"]),
            evaluation=section("evaluation"),
            index=section("index"),
            quotas=section("quotas"),
            rules=tuple(data.get("rules") or ()),
            diversity=float(data.get("diversity", 0.0)),
            ads=_ads_settings(data.get("ads", {})),
            segments=tuple(data.get("segments") or ()),
            connectors=copy.deepcopy(data.get("connectors") or CONNECTOR_DEFAULTS),
        )


DEFAULTS: dict[str, Any] = TenantConfig().as_dict()


def _as(type_name: str, value: Any) -> Any:
    return int(value) if type_name == "int" else float(value)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` overlaid on ``base``: objects merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def effective_config(stored: dict[str, Any] | None) -> TenantConfig:
    """The defaults overlaid with a tenant's stored configuration."""
    return TenantConfig.from_dict(deep_merge(DEFAULTS, stored or {}))


def _number(value: Any, where: str, minimum: float = 0.0) -> None:
    # NaN compares false with everything and infinities have no use here: both are refused.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise InvalidInput(f"{where} must be a number >= {minimum:g}", field=where)


# Upper bounds of the settings that size work on the shared machines (candidates per request, the
# dense EASE matrix, factors, users evaluated).
RESOURCE_LIMITS = {
    ("collab", "candidates"): 2000,
    ("collab", "ease_max_items"): 20000,  # a dense 20,000 x 20,000 float32 matrix is 1.6 GB
    ("collab", "factors"): 512,
    ("evaluation", "max_users"): 20000,
}


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a configuration a tenant admin wants to store; return it unchanged when valid."""
    if not isinstance(config, dict):
        raise InvalidInput("tenant configuration must be a JSON object")
    check_depth(config, "configuration")
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
    for section in SECTIONS:
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise InvalidInput(f"{section} must be an object")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise InvalidInput(f"{section}.{key}: unknown key; known: {', '.join(DEFAULTS[section])}")
            _number(value, f"{section}.{key}")
    # What a tenant may set costs the shared server and pipeline memory and time: bounded.
    for (section, key), top in RESOURCE_LIMITS.items():
        value = config.get(section, {}).get(key)
        if value is not None and value > top:
            raise InvalidInput(f"{section}.{key}: at most {top} (it sizes work on the shared server), got {value}")
    test_fraction = config.get("evaluation", {}).get("test_fraction", EvaluationSettings.test_fraction)
    if not 0 < test_fraction < 1:
        raise InvalidInput("evaluation.test_fraction must be between 0 and 1")
    if not 0 <= config.get("index", {}).get("incremental_max_fraction", IndexSettings.incremental_max_fraction) <= 1:
        raise InvalidInput("index.incremental_max_fraction must be between 0 and 1 (0: any change rebuilds in full)")
    parse_rules(config.get("rules", []))
    parse_segments(config.get("segments", []))
    _ads(config.get("ads", {}))
    validate_connectors(config.get("connectors", {}))
    diversity = config.get("diversity", 0.0)
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0 <= diversity <= 1:
        raise InvalidInput("diversity: the default for requests that give none, a number from 0 to 1",
                           field="diversity")
    attributes = config.get("profile_attributes", [])
    if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
        raise InvalidInput("profile_attributes must be a list of attribute names")
    return config
