"""Request and response bodies (msgspec)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from serving.openapi import FILTER_SCHEMA


class RuleEffect(msgspec.Struct, omit_defaults=True):
    """A rule that fired on an item: which (``rules[2]`` of the configuration, or the user's
    ``preferences.liked_categories``), its type, and what it did."""

    rule: str
    type: str  # boost, bury or pin
    score_change: float | None = None  # boost and bury: added to the score (a share of the list's score range)
    position: int | None = None  # pin: the position it put the item at


class Explanation(msgspec.Struct):
    """Why an item is in the answer and where (``explain=true``); ``null`` where a signal did not
    apply to it (a popular item has no collaborative score, say)."""

    sources: list[str]  # collab, content, profile, popular, similar, query, pinned
    collab_score: float | None  # the collaborative model's score for the user (before scaling)
    content_similarity: float | None  # cosine to the user's taste, the item asked about, or the query
    popularity: float | None  # the item's popularity (0 to 1) as ranking used it
    score_before_rules: float | None  # the strategy's score, before rules and diversity
    rules: list[RuleEffect]
    rank_before_rules: int | None  # 1-based, among the strategy's candidates
    rank_after_rules: int | None  # after boost and bury, before diversity and pins
    rank: int  # in the answer


class ScoredItem(msgspec.Struct, omit_defaults=True):
    id: str
    score: float  # a sponsored item's: its relevance to the request (0 to 1)
    title: str
    explanation: Explanation | None = None  # only with explain=true
    # Sponsored items only (retail media): the ad's id, to send back on its impression, click and
    # conversion events, and the advertiser's display name.
    sponsored: bool = False
    ad_id: str | None = None
    advertiser: str | None = None


class PromoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    variant: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]


class AdvertiserRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class AlertsRead(msgspec.Struct, forbid_unknown_fields=True):
    ids: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=1000)] = []
    all: bool = False


class StatusRequest(msgspec.Struct, forbid_unknown_fields=True):
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=20)]


class TrafficRequest(msgspec.Struct, forbid_unknown_fields=True):
    traffic: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]


class ExperimentVariant(msgspec.Struct):
    experiment: str
    variant: str


class ItemList(msgspec.Struct):
    items: list[ScoredItem]
    recommendation_id: str
    index_version: str
    strategy: str
    # The experiment (and variant) the request's unit was served in, if any; ``experiments`` lists
    # every one, when experiments of several layers apply.
    experiment: str | None = None
    variant: str | None = None
    experiments: list[ExperimentVariant] = []
    # With explain=true and retail media on: the auction (bids, relevance, prices, who lost and why).
    auction: dict[str, Any] | None = None


K = Annotated[int, msgspec.Meta(ge=1, le=100)]
# Validated by lodestar.filters (errors name the field); documented with the language's schema.
Filter = Annotated[dict[str, Any] | None, msgspec.Meta(extra_json_schema={"extra": FILTER_SCHEMA})]
ItemId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
UnitId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Diversity = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    k: K = 10
    filter: Filter = None
    exclude: Annotated[list[ItemId], msgspec.Meta(max_length=1000)] = []
    diversity: Diversity | None = None  # default: the tenant's configured diversity
    explain: bool = False  # add an explanation to each item
    user_id: UnitId | None = None  # the user or session searching: assigns its experiment variant
    session_id: UnitId | None = None


class SessionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """An anonymous visitor: the items they just interacted with, oldest first."""

    item_ids: Annotated[list[ItemId], msgspec.Meta(min_length=1, max_length=100)]
    k: K = 10
    filter: Filter = None
    exclude: Annotated[list[ItemId], msgspec.Meta(max_length=1000)] = []
    diversity: Diversity | None = None  # default: the tenant's configured diversity
    explain: bool = False  # add an explanation to each item
    user_id: UnitId | None = None  # a signed-in visitor, or the session: assigns its experiment variant
    session_id: UnitId | None = None


class EventBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=1000)]


class RejectedEvent(msgspec.Struct):
    index: int
    reason: str


class AdClick(msgspec.Struct, omit_defaults=True):
    """What became of an ad click of the batch: charged (its price, in micros) or why not."""

    index: int
    charged: bool
    price: int = 0
    reason: str | None = None


class EventsAccepted(msgspec.Struct, omit_defaults=True):
    accepted: int
    stored: int  # new events (an event already stored, same user, item, type and ts, is not stored twice)
    rejected: list[RejectedEvent]
    ad_clicks: list[AdClick] = []  # the batch's clicks on sponsored items (retail media)
    notes: list[RejectedEvent] = []  # events stored with a change (a conversion's unknown ad_id dropped)


class Preferences(msgspec.Struct, forbid_unknown_fields=True):
    liked_items: list[str] = []
    disliked_items: list[str] = []
    liked_categories: list[str] = []
    disliked_categories: list[str] = []


class Health(msgspec.Struct):
    status: str


class Ready(msgspec.Struct, omit_defaults=True):
    status: str
    tenant: str | None = None  # only with a tenant's key: which tenant, and its served version
    index_version: str | None = None


class KeyInfo(msgspec.Struct):
    key_id: str
    scopes: list[str]
    label: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None  # to within a minute (serving.key_usage); null: never used


class KeyList(msgspec.Struct):
    keys: list[KeyInfo]


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    scopes: list[str] = msgspec.field(default_factory=lambda: ["read", "events", "admin"])
    label: Annotated[str, msgspec.Meta(max_length=200)] = ""


class NewKey(msgspec.Struct):
    api_key: str  # shown once
    key_id: str
    scopes: list[str]
    label: str


class Quotas(msgspec.Struct, forbid_unknown_fields=True):
    """A tenant's quotas (0: no limit). In a PUT, the fields sent replace those stored; the others stay."""

    requests_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None
    key_requests_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None
    concurrent_requests: Annotated[int, msgspec.Meta(ge=0)] | None = None
    events_per_day: Annotated[int, msgspec.Meta(ge=0)] | None = None
    items: Annotated[int, msgspec.Meta(ge=0)] | None = None


class TenantList(msgspec.Struct):
    tenants: list[str]


class UserErased(msgspec.Struct):
    user_id: str
    events: int
    preferences: int
    served_lists: int
    segment_memberships: int = 0
    ad_serves: int = 0


class ConfigView(msgspec.Struct):
    stored: dict[str, Any]  # what the tenant set
    effective: dict[str, Any]  # with the defaults overlaid: what ranking and the pipeline use


class ConfigChange(msgspec.Struct, forbid_unknown_fields=True):
    """A configuration change: merged into the stored configuration, or replacing it (``replace``).
    ``quotas`` are the operator's and cannot be sent here."""

    config: dict[str, Any]
    replace: bool = False


class ConfigPreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """What ``config`` would change, on a seeded sample of the tenant's users; nothing is stored."""

    config: dict[str, Any]
    replace: bool = False
    sample: Annotated[int, msgspec.Meta(ge=1, le=500)] = 200  # two rankings per user, in the request
    k: K = 10
    user_id: ItemId | None = None  # shown side by side


class AuditEntry(msgspec.Struct):
    id: str
    at: float
    actor: str  # operator, key:<key id>, cli:<user>
    action: str  # config.set, config.restore, quotas.set, key.create, key.revoke
    target: str
    before: Any
    after: Any


class AuditLog(msgspec.Struct):
    entries: list[AuditEntry]  # newest first
