"""HTTP handlers, grouped by domain. Each reads the tenant from the ``tenant`` dependency."""

from __future__ import annotations

import csv
import dataclasses
import io
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.params import Parameter

from lodestar.ads import alerts as ads_alerts
from lodestar.ads import campaigns, notify
from lodestar.ads.market import LiveLineItem, Placed, Signals
from lodestar.ads.report import COLUMNS as ADS_COLUMNS
from lodestar.ads.report import INCREMENTALITY_REPORT
from lodestar.ads.report import REPORT as ADS_REPORT
from lodestar.cdp import ADMIN, EVENTS, CdpStore, audit_entry, require_tenant
from lodestar.config_versions import (
    CONFIG_ACTIONS,
    proposed_config,
    restore_version,
    store_config,
)
from lodestar.controls import Controls
from lodestar.erasure import erase_user
from lodestar.errors import InvalidInput, NotFound
from lodestar.experiments import lifecycle as experiments_lifecycle
from lodestar.explain import Trace
from lodestar.filters import parse_exclude, parse_filter
from lodestar.index import Hit, PublishedVersion
from lodestar.keys import (
    ADVERTISER,
    OPERATOR,
    create_key,
    key_id_of,
    parse_scopes,
    revoke_key,
)
from lodestar.preview import active_users, preview_change, sample_users
from lodestar.recommend import (
    HISTORY_LIMIT,
    nearest_controlled,
    recommend_for_session,
    recommend_for_user,
    similar_items,
)
from lodestar.records import check_text, parse_event, parse_id, parse_preferences
from lodestar.tenant_config import TenantConfig, effective_config, validate_config
from serving.ads import Sponsored, recommendation_signals, sponsored_answer, utc_day
from serving.auth import SCOPE
from serving.dependencies import (
    Cdp,
    Config,
    EmbedderDep,
    EmbedderLoaded,
    Indexes,
    Published,
    Tenant,
    UserStatesDep,
    services,
)
from serving.experiments import Assigned
from serving.loop import run_blocking
from serving.openapi import NOT_FOUND, READS, SECURED, WRITES, problem_responses
from serving.schemas import (
    AdClick,
    AdvertiserRequest,
    AlertsRead,
    AuditEntry,
    AuditLog,
    ConfigChange,
    ConfigPreviewRequest,
    ConfigView,
    EventBatch,
    EventsAccepted,
    ExperimentVariant,
    Explanation,
    Health,
    ItemList,
    KeyInfo,
    KeyList,
    KeyRequest,
    NewKey,
    Preferences,
    PromoteRequest,
    Quotas,
    Ready,
    RejectedEvent,
    RuleEffect,
    ScoredItem,
    SearchRequest,
    SessionRequest,
    StatusRequest,
    TenantList,
    TrafficRequest,
    UserErased,
)
from serving.served_log import ServedLog

AD_EVENTS = ("impression", "click")  # events that must name an ad the shop served
PathId = Annotated[str, Parameter(min_length=1, max_length=256,
                                  description="An id: 1 to 256 characters, no control characters")]
K = Annotated[int, Parameter(ge=1, le=100, description="How many items to return (1 to 100)")]
FILTER = Annotated[str | None, Parameter(description='URL-encoded JSON filter, e.g. {"categories": ["shoes"]}')]
EXCLUDE = Annotated[str | None, Parameter(description="Comma-separated item ids to leave out")]
# Validated here (422 naming the field) and only here; bodies validate it in their msgspec schema.
DIVERSITY = Annotated[float | None, Parameter(ge=0.0, le=1.0, description="0 (pure relevance) to 1 (most diverse); "
                                                                        "default: the tenant's configured diversity")]
UNIT = Annotated[str | None, Parameter(min_length=1, max_length=256,
                                       description="the user or session the request is for: assigns its experiment "
                                                   "variant (optional)")]
EXPLAIN = Annotated[bool, Parameter(description="true (with an admin key): each item says where it came from, its "
                                                "scores, the rules that moved it and its rank before and after them")]


def _items(
    served_log: ServedLog, tenant: str, hits: list[Hit], version: str, strategy: str, endpoint: str,
    user_id: str | None = None, trace: Trace | None = None, unit: str | None = None, assigned: Assigned = (),
    sponsored: Sponsored | None = None,
) -> ItemList:
    """The response, recorded in the served log under its recommendation_id for attribution (with
    the unit and the experiment variants it was served in); with a trace, each item carries its
    explanation; with retail media on, the sponsored items take their positions (``sponsored``)."""
    shown: list[Hit | Placed] = sponsored.items if sponsored is not None else list(hits)
    now = time.time()
    items = []
    ad_ids: dict[int, str] = {}
    for entry in shown:
        if isinstance(entry, Placed):
            ad_ids[id(entry)] = sponsored.ads.ad_id(tenant, entry, endpoint, now)
            items.append(ScoredItem(id=entry.product, score=round(entry.relevance, 6), title=entry.payload.get("title", ""),
                                    sponsored=True, ad_id=ad_ids[id(entry)], advertiser=entry.line_item.advertiser_name))
        else:
            items.append(ScoredItem(id=entry.item_id, score=round(entry.score, 6), title=entry.payload.get("title", ""),
                                    explanation=None if trace is None else _explanation(trace, entry.item_id)))
    body = ItemList(
        experiment=assigned[0][0] if assigned else None, variant=assigned[0][1] if assigned else None,
        experiments=[ExperimentVariant(experiment=e, variant=v) for e, v in assigned],
        items=items,
        recommendation_id=uuid.uuid4().hex,
        index_version=version,
        strategy=strategy,
        auction=sponsored.explanation if sponsored is not None and trace is not None else None,
    )
    if sponsored is not None and (sponsored.placed or sponsored.ghosts):
        served_log.record_ads(tenant, sponsored.serves(user_id, endpoint, now, ad_ids))
    # The organic items only: a list's CTR and the experiments measure the ranking, not the ads
    # (whose impressions and clicks are counted by their ad_id, in the ads report).
    served_log.record(tenant, {
        "recommendation_id": body.recommendation_id, "user_id": user_id, "endpoint": endpoint,
        "strategy": strategy, "items": [i.id for i in items if not i.sponsored], "unit_id": unit,
        "experiments": [list(a) for a in assigned],
    })
    return body


def _explanation(trace: Trace, item_id: str) -> Explanation:
    why = trace.explanation(item_id)
    return Explanation(**{**why, "rules": [RuleEffect(**rule) for rule in why["rules"]]})


def _trace(explain: bool, request: Request) -> Trace | None:
    """A trace for ``explain=true``, which needs an ``admin`` key: explanations show the tenant's
    rules, its scores and popularity, and what a user's preferences did (their liked categories),
    none of which a ``read`` key, made to ship inside a browser, may see."""
    if not explain:
        return None
    principal = request.state.principal
    if not principal.may(ADMIN):
        raise PermissionDeniedException(
            f"explain=true needs a key with the 'admin' scope (this one has {', '.join(principal.scopes)}): "
            "explanations show the tenant's rules and scores; leave explain out with a read key")
    return Trace()


def _controls(item_filter: Any, exclude: Any, diversity: float | None, config: TenantConfig) -> Controls:
    """The request's controls; without a diversity, the tenant's (or its experiment variant's) default."""
    return Controls(parse_filter(item_filter), parse_exclude(exclude),
                    config.diversity if diversity is None else diversity)


def _ad_history(cdp: CdpStore, tenant: str, user_id: str | None) -> Callable[[], list[dict[str, Any]]]:
    """Reads a named user's latest events when a line item with a frequency cap asks (their ad
    impressions today count against it); nothing for a request without a user."""
    user = None if user_id is None else parse_id(user_id, "user_id")
    return lambda: [] if user is None else cdp.user_events(tenant, user, limit=HISTORY_LIMIT)


def _user(user_id: str | None) -> str | None:
    return None if user_id is None else parse_id(user_id, "user_id")


def _user_segments(cdp: CdpStore, tenant: str, user_id: str | None) -> Callable[[], list[str]]:
    """Reads a named user's audience segments when a segment-targeted line item asks."""
    user = None if user_id is None else parse_id(user_id, "user_id")
    return lambda: [] if user is None else cdp.user_segments(tenant, user)


def _unit(user_id: str | None, session_id: str | None = None) -> str | None:
    """The unit an experiment assigns by: the user when known, else the session; kind-prefixed, so a
    user and a session of the same id are two units."""
    if user_id is not None:
        return f"user:{parse_id(user_id, 'user_id')}"
    return None if session_id is None else f"session:{parse_id(session_id, 'session_id')}"


def _on_the_loop(state: State, config: TenantConfig) -> bool:
    """Whether a page-view read runs on the event loop's thread (serving.loop): with every store in
    this process, and unless it may wait on something else. Retail media's first auction of a
    version builds the tenant's market, which reads its charges in full and may write the bidder's
    report (a commit); and until the embedding model has loaded, a user known only by their
    profile would wait for the load (its lock) to embed it. Those run in a worker thread."""
    return services(state).in_process and not config.ads.enabled and state.embedder_loaded.is_set()


class RecommendationController(Controller):
    security = SECURED
    path = "/v1"
    tags = ["recommendations"]

    @get("/users/{user_id:str}/recommendations", operation_id="recommendForUser", responses=READS)
    async def for_user(
        self, request: Request, state: State, tenant: Tenant, user_id: PathId, config: Config, published: Published,
        k: K = 10, filter: FILTER = None, exclude: EXCLUDE = None, diversity: DIVERSITY = None,
        explain: EXPLAIN = False,
    ) -> ItemList:
        """Items for a user: hybrid (collaborative + content) from their history, their profile when
        they have no history, popular items when nothing is known (``strategy`` says which). With
        retail media on, sponsored items take the ad-load positions (``sponsored``, ``ad_id``)."""
        return await run_blocking(_on_the_loop(state, config), self._for_user, request, state, tenant, user_id, config,
                                  published, k, filter, exclude, diversity, explain)

    def _for_user(
        self, request: Request, state: State, tenant: str, user_id: str, config: TenantConfig,
        published: PublishedVersion, k: int, filter: Any, exclude: Any, diversity: float | None, explain: bool,
    ) -> ItemList:
        app = services(state)
        cdp = app.cdp
        user_id = parse_id(user_id, "user_id")
        unit = _unit(user_id)
        config, assigned = app.experiments.apply(tenant, "recommendations", unit, config)
        controls = _controls(filter, exclude, diversity, config)
        trace = _trace(explain, request)
        events, preferences, kept = app.user_states.read(published, cdp, tenant, user_id, config)
        result = recommend_for_user(published, cdp, app.embedder, tenant, user_id, k, config, controls, trace,
                                    (events or [], preferences), kept)
        sponsored = sponsored_answer(
            app.ads, tenant, published, config, "recommendations", k, result.items,
            recommendation_signals(config, published, result.taste, result.collab_query, result.items),
            trace is not None, exclude=result.excluded, item_filter=result.item_filter,
            events=_ad_history(cdp, tenant, user_id) if events is None else events,
            segments=_user_segments(cdp, tenant, user_id), user_id=user_id) if config.ads.enabled else None
        return _items(app.served_log, tenant, result.items, published.version, result.strategy, "recommendations",
                      user_id, trace, unit, assigned, sponsored)

    @post("/recommendations/session", operation_id="recommendForSession", responses=WRITES, status_code=200)
    async def for_session(
        self, request: Request, state: State, tenant: Tenant, data: SessionRequest, config: Config,
        published: Published,
    ) -> ItemList:
        """Items for an anonymous visitor from the items they just interacted with (oldest first)."""
        return await run_blocking(_on_the_loop(state, config), self._for_session, request, state, tenant, data, config,
                                  published)

    def _for_session(
        self, request: Request, state: State, tenant: str, data: SessionRequest, config: TenantConfig,
        published: PublishedVersion,
    ) -> ItemList:
        app = services(state)
        cdp = app.cdp
        unit = _unit(data.user_id, data.session_id)
        config, assigned = app.experiments.apply(tenant, "session", unit, config)
        controls = _controls(data.filter, data.exclude, data.diversity, config)
        item_ids = [parse_id(i, f"item_ids[{n}]") for n, i in enumerate(data.item_ids)]
        trace = _trace(data.explain, request)
        result = recommend_for_session(published, item_ids, data.k, config, controls, trace=trace)
        sponsored = sponsored_answer(
            app.ads, tenant, published, config, "session", data.k, result.items,
            recommendation_signals(config, published, result.taste, result.collab_query, result.items),
            trace is not None,
            exclude=result.excluded, item_filter=result.item_filter,
            events=_ad_history(cdp, tenant, data.user_id),
            segments=_user_segments(cdp, tenant, data.user_id), user_id=_user(data.user_id)) if config.ads.enabled \
            else None
        return _items(app.served_log, tenant, result.items, published.version, result.strategy, "session",
                      data.user_id, trace, unit, assigned, sponsored)


class ItemController(Controller):
    security = SECURED
    path = "/v1/items"
    tags = ["items"]

    @get("/{item_id:str}/similar", operation_id="similarItems", responses=READS | NOT_FOUND)
    async def similar(
        self, request: Request, state: State, tenant: Tenant, item_id: PathId, config: Config,
        published: Published, k: K = 10, filter: FILTER = None, exclude: EXCLUDE = None, diversity: DIVERSITY = None,
        explain: EXPLAIN = False, user_id: UNIT = None, session_id: UNIT = None,
    ) -> ItemList:
        """Items most like this one (content embeddings)."""
        return await run_blocking(_on_the_loop(state, config), self._similar, request, state, tenant, item_id, config,
                                  published, k, filter, exclude, diversity, explain, user_id, session_id)

    def _similar(
        self, request: Request, state: State, tenant: str, item_id: str, config: TenantConfig,
        published: PublishedVersion, k: int, filter: Any, exclude: Any, diversity: float | None, explain: bool,
        user_id: str | None, session_id: str | None,
    ) -> ItemList:
        app = services(state)
        cdp = app.cdp
        item_id = parse_id(item_id, "item_id")
        unit = _unit(user_id, session_id)
        config, assigned = app.experiments.apply(tenant, "similar", unit, config)
        controls = _controls(filter, exclude, diversity, config)
        trace = _trace(explain, request)
        hits = similar_items(published.reader, item_id, k, config, controls, trace)
        if hits is None:
            raise NotFound(f"item {item_id!r} is not in the catalog (or is unavailable or deleted)")
        sponsored = None
        if config.ads.enabled:
            source = published.reader.get(item_id)
            sponsored = sponsored_answer(
                app.ads, tenant, published, config, "similar", k, hits, Signals(content=source.vector),
                trace is not None,
                exclude=frozenset((item_id, *controls.exclude)), item_filter=controls.item_filter,
                categories=frozenset(source.payload.get("categories") or ()), events=_ad_history(cdp, tenant, user_id),
                segments=_user_segments(cdp, tenant, user_id), user_id=_user(user_id))
        return _items(app.served_log, tenant, hits, published.version, "similar_items", "similar", user_id, trace,
                      unit, assigned, sponsored)


class SearchController(Controller):
    security = SECURED
    path = "/v1/search"
    tags = ["search"]

    @post("/", operation_id="semanticSearch", responses=WRITES, status_code=200, sync_to_thread=True)
    def search(
        self, request: Request, state: State, tenant: Tenant, data: SearchRequest, config: Config,
        published: Published,
    ) -> ItemList:
        """Items whose text is closest in meaning to the query."""
        if not data.query.strip():
            raise InvalidInput("query: must contain some text", field="query")
        app = services(state)
        cdp = app.cdp
        unit = _unit(data.user_id, data.session_id)
        config, assigned = app.experiments.apply(tenant, "search", unit, config)
        controls = _controls(data.filter, data.exclude, data.diversity, config)
        vector = app.embedder.encode([data.query])[0]
        trace = _trace(data.explain, request)
        hits = nearest_controlled(published.reader, vector, data.k, config, controls, trace=trace)
        sponsored = sponsored_answer(
            app.ads, tenant, published, config, "search", data.k, hits, Signals(content=vector), trace is not None,
            exclude=frozenset(controls.exclude), item_filter=controls.item_filter, query=data.query,
            events=_ad_history(cdp, tenant, data.user_id),
            segments=_user_segments(cdp, tenant, data.user_id), user_id=_user(data.user_id)) if config.ads.enabled \
            else None
        return _items(app.served_log, tenant, hits, published.version, "semantic_search", "search", data.user_id,
                      trace, unit, assigned, sponsored)


class EventController(Controller):
    security = SECURED
    path = "/v1/events"
    tags = ["events"]
    opt = {SCOPE: EVENTS}

    @post("/", operation_id="ingestEvents", responses=WRITES, status_code=200, sync_to_thread=True)
    def ingest(
        self, state: State, tenant: Tenant, data: EventBatch, config: Config,
        atomic: Annotated[bool, Parameter(description="reject the whole batch if any event is invalid")] = False,
    ) -> EventsAccepted:
        """Store 1 to 1000 events. A 200 means every accepted event is durable in the CDP store and
        shapes the user's next recommendations; invalid events are reported by index and reason.
        An event may carry the ``ad_id`` of a sponsored item it is about (an impression, click or
        conversion); an impression or click whose ``ad_id`` the shop never served (or served more
        than a day ago, or for another item) is rejected; any other event is stored without such an
        ``ad_id`` (``notes`` says so). A click on an ad is charged to its line item once
        (``ad_clicks`` says at what price, or why not)."""
        app = services(state)
        return store_events(tenant, list(enumerate(data.events)), app.cdp, config, app.event_quotas, app.ads, atomic)


def store_events(
    tenant: str, candidates: list[tuple[int, Any]], cdp: CdpStore, config: TenantConfig, event_quotas: Any, ads: Any,
    atomic: bool, *, field: str = "events", what: str = "event(s)", notes: list[RejectedEvent] | None = None,
    other_writes: Callable[[list[dict[str, Any]]], None] | None = None, other_data: bool = False,
) -> EventsAccepted:
    """Validate, charge and store events as ``POST /v1/events`` does, for every route that takes
    events: ``candidates`` are (index in the request, raw event or the :class:`InvalidInput` that
    refused it). ``other_writes`` (a connector's profiles and catalog gaps) is given the valid events
    and runs after validation and before they are stored, so a 2xx means all of it is durable; a
    request with invalid events and nothing valid to store (no valid event, and ``other_data`` false:
    no profile) is a 422."""
    now = time.time()
    # ``notes`` is the caller's list, kept: other_writes may add to it.
    valid, rejected, clicks, notes = [], [], [], notes if notes is not None else []
    for index, raw in candidates:
        try:
            if isinstance(raw, InvalidInput):
                raise raw
            if not isinstance(raw, dict):
                raise InvalidInput("an event must be a JSON object")
            event = parse_event(raw, default_ts=now)
            if event["ad_id"] is not None:
                try:
                    ad, record = ads.check(tenant, event, now)
                except InvalidInput as exc:
                    if event["type"] in AD_EVENTS:
                        raise
                    # A conversion is the shop's data whatever its ad id says: kept, without it.
                    notes.append(RejectedEvent(index=index, reason=f"stored without its ad_id: {exc}"))
                    event["ad_id"] = None
                else:
                    if event["type"] == "click":
                        clicks.append((index, event, ad, record))
            valid.append(event)
        except InvalidInput as exc:
            rejected.append(RejectedEvent(index=index, reason=str(exc)))
    if rejected and (atomic or not (valid or other_data)):
        detail = "no event was stored: " + ("the batch is atomic and " if atomic and (valid or other_data) else "") \
            + f"{len(rejected)} {what} are invalid, e.g. {field}[{rejected[0].index}]: {rejected[0].reason}"
        raise HTTPException(status_code=422, detail=detail, extra=[
            {"key": f"{field}[{r.index}]", "source": "body", "message": r.reason} for r in rejected])
    held = event_quotas.reserve(tenant, config.quotas, len(valid))  # 429 for a whole batch past today's quota
    stored = 0
    try:
        # Clicks are charged before the events are stored: a charge is idempotent (per ad_id), so a
        # batch sent again after a failure is never charged twice, and no stored click goes unpaid.
        charged = [(index, ads.charge(tenant, event, ad, record, config.ads, now))
                   for index, event, ad, record in clicks]
        if other_writes is not None:
            other_writes(valid)
        stored = cdp.append_events(tenant, valid)
    finally:
        event_quotas.settle(tenant, held, stored)
    return EventsAccepted(accepted=len(valid), stored=stored, rejected=rejected, notes=notes, ad_clicks=[
        AdClick(index=index, charged=result["charged"], price=clicks[n][2].price if result["charged"] else 0,
                reason=result["reason"]) for n, (index, result) in enumerate(charged)])


class PreferenceController(Controller):
    security = SECURED
    path = "/v1/users/{user_id:str}/preferences"
    tags = ["users"]
    opt = {SCOPE: EVENTS}  # a user's stated data: not for keys shipped inside a browser

    @put("/", operation_id="putPreferences", responses=WRITES, sync_to_thread=True)
    def put_preferences(self, tenant: Tenant, user_id: PathId, data: Preferences, cdp: Cdp) -> Preferences:
        """Replace the user's liked and disliked items and categories; the next recommendations follow them."""
        clean = parse_preferences(msgspec.to_builtins(data))
        cdp.put_preferences(tenant, parse_id(user_id, "user_id"), clean)
        return Preferences(**clean)

    @get("/", operation_id="getPreferences", responses=READS, sync_to_thread=True)
    def get_preferences(self, tenant: Tenant, user_id: PathId, cdp: Cdp) -> Preferences:
        stored = cdp.get_preferences(tenant, parse_id(user_id, "user_id"))
        return Preferences(**(stored or {}))


class UserSegmentController(Controller):
    security = SECURED
    path = "/v1/users/{user_id:str}/segments"
    tags = ["audiences"]
    opt = {SCOPE: EVENTS}  # marketing audiences are the shop's data: not for keys shipped inside a browser

    @get("/", operation_id="userSegments", responses=READS, sync_to_thread=True)
    def segments(self, tenant: Tenant, user_id: PathId, cdp: Cdp) -> dict[str, Any]:
        """The audience segments the user is in, as the pipeline's ``audience_segments`` last computed them."""
        user_id = parse_id(user_id, "user_id")
        return {"user_id": user_id, "segments": cdp.user_segments(tenant, user_id)}


class SegmentController(Controller):
    """The tenant's audience segments, for its ``admin`` key (definitions live in the configuration)."""

    security = SECURED
    path = "/v1/segments"
    tags = ["audiences"]
    opt = {SCOPE: ADMIN}

    @get("/", operation_id="listSegments", responses=READS, sync_to_thread=True)
    def list_segments(self, tenant: Tenant, cdp: Cdp, config: Config) -> dict[str, Any]:
        """Each segment's definition and size (its members as last materialized)."""
        sizes = cdp.segment_sizes(tenant)
        return {"segments": [{"name": s.name, "kind": "lookalike" if s.lookalike else "rule",
                              "definition": ({"lookalike": {"seed": s.seed, "size": s.size}} if s.lookalike
                                             else {"rule": s.rule}), "size": sizes.get(s.name, 0)}
                             for s in config.parsed_segments]}

    @get("/{name:str}/members", operation_id="segmentMembers", responses=READS | NOT_FOUND, sync_to_thread=True)
    def members(self, tenant: Tenant, name: PathId, cdp: Cdp, config: Config) -> dict[str, Any]:
        if name not in {s.name for s in config.parsed_segments}:
            raise NotFound(f"no audience segment {name!r} (GET /v1/segments lists them)")
        return {"segment": name, "members": cdp.segment_members(tenant, name)}


class UserController(Controller):
    security = SECURED
    path = "/v1/users/{user_id:str}"
    tags = ["users"]
    opt = {SCOPE: ADMIN}

    @delete("/", operation_id="eraseUser", responses=READS, status_code=200, sync_to_thread=True)
    def erase(self, request: Request, tenant: Tenant, user_id: PathId, cdp: Cdp, user_states: UserStatesDep
              ) -> UserErased:
        """Erase a user: their events, preferences and served lists are deleted from the CDP store
        at once (the user's next recommendations are those of a stranger); the next sync drops them
        from the pipeline's extracts and features."""
        user_id = parse_id(user_id, "user_id")
        counts = erase_user(cdp, tenant, user_id, _actor(request))
        user_states.forget(tenant, user_id)
        return UserErased(user_id=user_id, **counts)


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", opt={"public": True})
    async def health(self) -> Health:
        """The process is up."""
        return Health(status="ok")

    @get("/ready", operation_id="ready", responses=problem_responses(503), opt={"public": True}, sync_to_thread=True)
    def ready(self, request: Request, cdp: Cdp, indexes: Indexes, embedder_loaded: EmbedderLoaded) -> Ready:
        """Ready once the embedding model is loaded and the CDP store answers (503 before). It names
        no tenant to the public; with a tenant's key it also says which index version that tenant
        is served from (503 while it has none). The same few reads whatever the number of tenants."""
        if not embedder_loaded.is_set():
            raise HTTPException(status_code=503, detail="the embedding model is still loading")
        cdp.get_tenant("-")  # one keyed read (no tenant has that name): the store answers
        principal = request.state.principal
        if principal is None or principal.tenant is None:
            return Ready(status="ready")
        return Ready(status="ready", tenant=principal.tenant, index_version=indexes.get(principal.tenant).version)


class KeyController(Controller):
    """A tenant's API keys, managed with an admin-scoped key of that tenant."""

    security = SECURED
    path = "/v1/keys"
    tags = ["keys"]
    opt = {SCOPE: ADMIN}

    @get("/", operation_id="listKeys", responses=problem_responses(401, 403, 503), sync_to_thread=True)
    def list_keys(self, tenant: Tenant, cdp: Cdp) -> KeyList:
        """Every key of the tenant (never the secret), revoked ones with the time they were revoked."""
        return _keys(cdp, tenant)

    @post("/", operation_id="createKey", responses=WRITES, status_code=201, sync_to_thread=True)
    def create_key(self, request: Request, tenant: Tenant, data: KeyRequest, cdp: Cdp) -> NewKey:
        """Issue a key with the given scopes (``read`` is safe inside a browser or an app); the
        answer is the only time the key is shown."""
        return _new_key(cdp, tenant, data, _actor(request))

    @delete("/{key_id:str}", operation_id="revokeKey", responses=READS | NOT_FOUND, status_code=200,
            sync_to_thread=True)
    def revoke_key(self, request: Request, tenant: Tenant, key_id: PathId, cdp: Cdp) -> KeyInfo:
        """Revoke a key at once: every server refuses it from the next request on."""
        return _revoke(cdp, tenant, key_id, _actor(request))


class ConfigController(Controller):
    """The tenant's configuration, for a key with the ``admin`` scope: read it, preview a change on
    a sample of its users, store a change (validated as the CLI validates it; 422 naming the field)."""

    security = SECURED
    path = "/v1/config"
    tags = ["configuration"]
    opt = {SCOPE: ADMIN}

    @get("/", operation_id="getConfig", responses=READS, sync_to_thread=True)
    def get_config(self, tenant: Tenant, cdp: Cdp) -> ConfigView:
        return _config_view(require_tenant(cdp, tenant))

    @put("/", operation_id="setConfig", responses=WRITES | problem_responses(409), sync_to_thread=True)
    def set_config(self, request: Request, tenant: Tenant, data: ConfigChange, cdp: Cdp) -> ConfigView:
        """Store a change (a new version in the audit log); ranking weights and rules apply from the
        next request, model settings at the next materialization."""
        record = require_tenant(cdp, tenant)
        store_config(cdp, record, proposed_config(record, data.config, data.replace), _actor(request))
        return _config_view(require_tenant(cdp, tenant))

    @get("/history", operation_id="configHistory", responses=READS, sync_to_thread=True)
    def history(self, tenant: Tenant, cdp: Cdp, limit: Annotated[int, Parameter(ge=1, le=500)] = 50) -> AuditLog:
        """Every stored configuration, newest first, with who stored it and when (``id`` restores it)."""
        return _audit_log(cdp.read_audit(tenant, limit, action_prefix=CONFIG_ACTIONS))

    @post("/restore/{entry_id:str}", operation_id="restoreConfig", responses=WRITES | NOT_FOUND | problem_responses(409),
          status_code=200,
          sync_to_thread=True)
    def restore(self, request: Request, tenant: Tenant, entry_id: PathId, cdp: Cdp) -> ConfigView:
        """Store again the configuration of an earlier version (recorded as a restore)."""
        restore_version(cdp, require_tenant(cdp, tenant), parse_id(entry_id, "entry_id"), _actor(request),
                        "GET /v1/config/history")
        return _config_view(require_tenant(cdp, tenant))

    @post("/preview", operation_id="previewConfig", responses=WRITES, status_code=200, sync_to_thread=True)
    def preview_config(
        self, request: Request, tenant: Tenant, data: ConfigPreviewRequest, cdp: Cdp, config: Config,
        published: Published, embedder: EmbedderDep,
    ) -> dict[str, Any]:
        """How the change would move the recommendations of a seeded sample of the tenant's users
        (lists changed, overlap, rank shift, items entering and leaving; ``user_id``'s two lists side
        by side). Nothing is stored."""
        proposed = effective_config(proposed_config(require_tenant(cdp, tenant), data.config, data.replace))
        user_id = parse_id(data.user_id, "user_id") if data.user_id is not None else None
        users = sample_users(active_users(request.app.state.settings, tenant), data.sample)
        if not users:
            raise InvalidInput(f"tenant {tenant!r} has no users with events to preview on yet: import events and "
                               "materialize it first")
        return preview_change(published, cdp, embedder, tenant, config, proposed, users, data.k, user_id).as_dict()


def _config_view(record: dict[str, Any]) -> ConfigView:
    return ConfigView(stored=record["config"] or {}, effective=effective_config(record["config"]).as_dict())


class AuditController(Controller):
    """The tenant's audit log for an ``admin`` key: every change with who, when, and before and after."""

    security = SECURED
    path = "/v1/audit"
    tags = ["configuration"]
    opt = {SCOPE: ADMIN}

    @get("/", operation_id="auditLog", responses=READS, sync_to_thread=True)
    def audit(self, tenant: Tenant, cdp: Cdp, limit: Annotated[int, Parameter(ge=1, le=500)] = 100) -> AuditLog:
        return _audit_log(cdp.read_audit(tenant, limit))


def _audit_log(entries: list[dict[str, Any]]) -> AuditLog:
    return AuditLog(entries=[AuditEntry(**e) for e in entries])


class OperatorController(Controller):
    """Tenants and their keys for the operator (``Authorization: Bearer $LODESTAR_ADMIN_KEY``)."""

    security = SECURED
    path = "/v1/operator/tenants"
    tags = ["operator"]
    opt = {SCOPE: OPERATOR}

    @get("/", operation_id="operatorListTenants", responses=problem_responses(401, 403, 503), sync_to_thread=True)
    def list_tenants(self, cdp: Cdp) -> TenantList:
        return TenantList(tenants=[t["name"] for t in cdp.list_tenants()])

    @get("/{tenant_name:str}/quotas", operation_id="operatorGetQuotas", responses=READS | NOT_FOUND,
         sync_to_thread=True)
    def get_quotas(self, tenant_name: PathId, cdp: Cdp) -> Quotas:
        """The tenant's quotas (0: no limit)."""
        return _quotas(require_tenant(cdp, tenant_name))

    @put("/{tenant_name:str}/quotas", operation_id="operatorSetQuotas", responses=WRITES | NOT_FOUND | problem_responses(409),
         sync_to_thread=True)
    def set_quotas(self, request: Request, tenant_name: PathId, data: Quotas, cdp: Cdp) -> Quotas:
        """Change the tenant's quotas (the fields sent; 0 lifts a limit). Every serving process applies
        them from its next request of the tenant."""
        record = require_tenant(cdp, tenant_name)
        stored = dict(record["config"] or {})
        before = dict(stored.get("quotas", {}))
        changes = {k: v for k, v in msgspec.to_builtins(data).items() if v is not None}
        stored["quotas"] = {**before, **changes}
        cdp.set_tenant_config(record["name"], validate_config(stored),
                              audit=audit_entry(_actor(request), "quotas.set", "quotas", before, stored["quotas"]),
                              if_updated_at=record["updated_at"])
        return _quotas(require_tenant(cdp, tenant_name))

    @get("/{tenant_name:str}/keys", operation_id="operatorListKeys", responses=READS | NOT_FOUND, sync_to_thread=True)
    def list_keys(self, tenant_name: PathId, cdp: Cdp) -> KeyList:
        return _keys(cdp, require_tenant(cdp, tenant_name)["name"])

    @post("/{tenant_name:str}/keys", operation_id="operatorCreateKey", responses=WRITES | NOT_FOUND, status_code=201,
          sync_to_thread=True)
    def create_key(self, request: Request, tenant_name: PathId, data: KeyRequest, cdp: Cdp) -> NewKey:
        return _new_key(cdp, require_tenant(cdp, tenant_name)["name"], data, _actor(request))

    @delete("/{tenant_name:str}/keys/{key_id:str}", operation_id="operatorRevokeKey", responses=READS | NOT_FOUND, status_code=200,
            sync_to_thread=True)
    def revoke_key(self, request: Request, tenant_name: PathId, key_id: PathId, cdp: Cdp) -> KeyInfo:
        return _revoke(cdp, require_tenant(cdp, tenant_name)["name"], key_id, _actor(request))


def _quotas(record: dict[str, Any]) -> Quotas:
    return Quotas(**dataclasses.asdict(effective_config(record["config"]).quotas))


def _keys(cdp: CdpStore, tenant: str) -> KeyList:
    return KeyList(keys=[KeyInfo(**k) for k in cdp.list_api_keys(tenant)])


def _actor(request: Request) -> str:
    """Who made a change, for the audit log: ``operator``, or ``key:<key id>`` of the tenant key."""
    return request.state.principal.actor


def _new_key(cdp: CdpStore, tenant: str, data: KeyRequest, actor: str) -> NewKey:
    scopes = parse_scopes(data.scopes)
    label = check_text(data.label.strip(), "label")
    key = create_key(cdp, tenant, scopes, label, actor)
    return NewKey(api_key=key, key_id=key_id_of(key), scopes=list(scopes), label=label)


def _revoke(cdp: CdpStore, tenant: str, key_id: str, actor: str) -> KeyInfo:
    key_id = parse_id(key_id, "key_id")
    revoke_key(cdp, tenant, key_id, actor, "GET /v1/keys")
    return next(KeyInfo(**k) for k in cdp.list_api_keys(tenant) if k["key_id"] == key_id)


class ExperimentController(Controller):
    """A tenant's experiments, for a key with the ``admin`` scope (lodestar.experiments)."""

    security = SECURED
    path = "/v1/experiments"
    tags = ["experiments"]
    opt = {SCOPE: ADMIN}

    @post("/", operation_id="createExperiment", responses=WRITES | problem_responses(409), status_code=201,
          sync_to_thread=True)
    def create(self, request: Request, tenant: Tenant, data: dict[str, Any], cdp: Cdp) -> dict[str, Any]:
        """Start an experiment: validated like the configuration (422 naming the field), sized by a
        power analysis (``plan``: units per variant, days), refused (409) when a running experiment
        of its layer shares a placement. Variants apply from the next second."""
        return experiments_lifecycle.create(cdp, tenant, data, _actor(request))

    @get("/", operation_id="listExperiments", responses=READS, sync_to_thread=True)
    def list_experiments(self, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        return {"experiments": cdp.list_experiments(tenant)}

    @get("/{name:str}", operation_id="getExperiment", responses=READS | NOT_FOUND, sync_to_thread=True)
    def show(self, tenant: Tenant, name: PathId, cdp: Cdp) -> dict[str, Any]:
        """The experiment and its report as the pipeline's ``experiment_report`` last computed it."""
        record = experiments_lifecycle.find(cdp, tenant, name)
        report, updated_at = experiments_lifecycle.report_of(cdp, tenant, name)
        return {"experiment": record, "report": report, "report_updated_at": updated_at}

    @post("/{name:str}/stop", operation_id="stopExperiment", responses=WRITES | NOT_FOUND | problem_responses(409),
          status_code=200, sync_to_thread=True)
    def stop(self, request: Request, tenant: Tenant, name: PathId, cdp: Cdp) -> dict[str, Any]:
        return experiments_lifecycle.stop(cdp, tenant, name, _actor(request))

    @post("/{name:str}/traffic", operation_id="setExperimentTraffic",
          responses=WRITES | NOT_FOUND | problem_responses(409), status_code=200, sync_to_thread=True)
    def traffic(self, request: Request, tenant: Tenant, name: PathId, data: TrafficRequest, cdp: Cdp) -> dict[str, Any]:
        """Change the share of units in the experiment: raising it keeps everyone in, in their
        variant, and adds units; lowering it takes out only the last ones."""
        return experiments_lifecycle.set_traffic(cdp, tenant, name, data.traffic, _actor(request))

    @post("/{name:str}/promote", operation_id="promoteExperimentVariant",
          responses=WRITES | NOT_FOUND | problem_responses(409), status_code=200, sync_to_thread=True)
    def promote(self, request: Request, tenant: Tenant, name: PathId, data: PromoteRequest, cdp: Cdp) -> dict[str, Any]:
        """Make a variant the live configuration (a new configuration version: undo it with
        ``POST /v1/config/restore``) and stop the experiment."""
        return {"stored": experiments_lifecycle.promote(cdp, tenant, name, data.variant, _actor(request))}


class AdvertiserController(Controller):
    """The tenant's advertisers, for its ``admin`` key: each gets a key of its own (shown once)."""

    security = SECURED
    path = "/v1/advertisers"
    tags = ["retail media"]
    opt = {SCOPE: ADMIN}

    @post("/", operation_id="createAdvertiser", responses=WRITES | problem_responses(409), status_code=201,
          sync_to_thread=True)
    def create(self, request: Request, tenant: Tenant, data: AdvertiserRequest, cdp: Cdp) -> dict[str, Any]:
        """A new advertiser and its key: the key sees and changes only that advertiser's line items
        and spend (under /v1/ads), never the tenant's users or another advertiser's data."""
        advertiser, key = campaigns.create_advertiser(cdp, tenant, data.name, _actor(request))
        return {"advertiser": advertiser, "api_key": key}

    @get("/", operation_id="listAdvertisers", responses=READS, sync_to_thread=True)
    def list_advertisers(self, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        return {"advertisers": cdp.list_advertisers(tenant)}

    @get("/report.csv", operation_id="adsReportCsv", responses=READS, sync_to_thread=True, media_type="text/csv")
    def report_csv(self, tenant: Tenant, cdp: Cdp) -> Response[str]:
        """Every advertiser's report rows as CSV (one row per day, advertiser, campaign, line item,
        product and placement)."""
        return _csv(_ads_report(cdp, tenant, None)["rows"], f"{tenant}-ads-report.csv")

    @get("/report", operation_id="adsReport", responses=READS, sync_to_thread=True)
    def report(self, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        """Every advertiser's rows of the ads report (per line item and day: impressions, clicks,
        charged clicks, spend, attributed conversions and revenue, ROAS), as the pipeline's
        ``ads_report`` asset last computed it; spend right now is on each line item."""
        return _ads_report(cdp, tenant, None)


class AdsController(Controller):
    """An advertiser's line items and spend, for that advertiser's key only."""

    security = SECURED
    path = "/v1/ads"
    tags = ["retail media"]
    opt = {SCOPE: ADVERTISER}

    @get("/line-items", operation_id="listLineItems", responses=READS, sync_to_thread=True)
    def line_items(self, request: Request, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        """This advertiser's line items, each with its spend today (UTC) and in total (micros) and
        whether it is serving (``active``) or why not."""
        now = time.time()
        spend = cdp.ad_spend_all(tenant, utc_day(now))
        return {"line_items": [_with_spend(r, spend.get(r["id"]), now)
                               for r in cdp.list_line_items(tenant, request.state.principal.advertiser)]}

    @post("/line-items", operation_id="createLineItem", responses=WRITES | problem_responses(409), status_code=201,
          sync_to_thread=True)
    def create(self, request: Request, tenant: Tenant, data: dict[str, Any], cdp: Cdp) -> dict[str, Any]:
        """A line item promoting catalog products at a CPC bid within a daily and a total budget
        (amounts in the tenant's currency, e.g. "0.35"; stored in micros); 422 naming the field."""
        return campaigns.create_line_item(cdp, tenant, request.state.principal.advertiser, data, _actor(request))

    @post("/webhooks", operation_id="createWebhook", responses=WRITES, status_code=201, sync_to_thread=True)
    def create_webhook(self, request: Request, tenant: Tenant, data: dict[str, Any], cdp: Cdp) -> dict[str, Any]:
        """Register a URL for this advertiser's events (budget at 80% and 100%, a line item ended,
        ROAS or iROAS under a threshold); the answer is the only time its signing secret is shown."""
        webhook, secret = notify.register(cdp, tenant, request.state.principal.advertiser, data, _actor(request))
        return {"webhook": webhook, "secret": secret}

    @get("/webhooks", operation_id="listWebhooks", responses=READS, sync_to_thread=True)
    def webhooks(self, request: Request, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        """This advertiser's webhooks (never their secrets), with their status (``disabled`` and
        why, after a day of failed deliveries)."""
        mine = request.state.principal.advertiser
        return {"webhooks": [notify.public(w) for w in cdp.list_webhooks(tenant)
                             if w["advertiser"] == mine and w["status"] != "deleted"]}

    @get("/webhooks/{webhook_id:str}/deliveries", operation_id="webhookDeliveries", responses=READS | NOT_FOUND,
         sync_to_thread=True)
    def deliveries(self, request: Request, tenant: Tenant, webhook_id: PathId, cdp: Cdp) -> dict[str, Any]:
        """The webhook's latest events, each with its status and every delivery attempt."""
        notify.webhook_of(cdp, tenant, request.state.principal.advertiser, webhook_id)
        return {"deliveries": [{k: v for k, v in n.items() if k != "tenant"}
                               for n in cdp.list_notifications(tenant, webhook_id)]}

    @delete("/webhooks/{webhook_id:str}", operation_id="deleteWebhook", responses=READS | NOT_FOUND, status_code=200,
            sync_to_thread=True)
    def delete_webhook(self, request: Request, tenant: Tenant, webhook_id: PathId, cdp: Cdp) -> dict[str, Any]:
        return notify.delete(cdp, tenant, request.state.principal.advertiser, webhook_id, _actor(request))

    @get("/alerts", operation_id="advertiserAlerts", responses=READS, sync_to_thread=True)
    def alerts(self, request: Request, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        """This advertiser's inbox: budget, end and pacing alerts of its line items, unread first."""
        mine = request.state.principal.advertiser
        found = ads_alerts.alerts(cdp, tenant, mine, reader=f"advertiser:{mine}")
        return {"unread": sum(a["unread"] for a in found), "alerts": found}

    @post("/alerts/read", operation_id="readAdvertiserAlerts", responses=WRITES, status_code=200,
          sync_to_thread=True)
    def read_alerts(self, request: Request, tenant: Tenant, data: AlertsRead, cdp: Cdp) -> dict[str, Any]:
        """Mark alerts read (``ids``, or every current one with ``all``)."""
        mine = request.state.principal.advertiser
        ids = [a["id"] for a in ads_alerts.alerts(cdp, tenant, mine)] if data.all else data.ids
        return {"marked": ads_alerts.mark_read(cdp, tenant, f"advertiser:{mine}", ids)}

    @get("/segments", operation_id="advertiserSegments", responses=READS, sync_to_thread=True)
    def segments(self, tenant: Tenant, cdp: Cdp, config: Config) -> dict[str, Any]:
        """The shop's audience segments a line item may target, each with its size when it has at
        least the shop's minimum (``ads.audience_min_size``, default 100): never its members."""
        least, sizes = config.ads.audience_min_size, cdp.segment_sizes(tenant)
        return {"minimum_size": least, "segments": [
            {"name": s.name, "size": sizes.get(s.name, 0) if sizes.get(s.name, 0) >= least else None}
            for s in config.parsed_segments]}

    @get("/report.csv", operation_id="advertiserReportCsv", responses=READS, sync_to_thread=True,
         media_type="text/csv")
    def report_csv(self, request: Request, tenant: Tenant, cdp: Cdp) -> Response[str]:
        """This advertiser's report rows as CSV."""
        mine = request.state.principal.advertiser
        return _csv(_ads_report(cdp, tenant, mine)["rows"], f"{mine}-ads-report.csv")

    @get("/report", operation_id="advertiserReport", responses=READS, sync_to_thread=True)
    def report(self, request: Request, tenant: Tenant, cdp: Cdp) -> dict[str, Any]:
        """This advertiser's rows of the ads report (see ``GET /v1/advertisers/report``)."""
        return _ads_report(cdp, tenant, request.state.principal.advertiser)

    @get("/line-items/{line_item:str}", operation_id="getLineItem", responses=READS | NOT_FOUND, sync_to_thread=True)
    def line_item(self, request: Request, tenant: Tenant, line_item: PathId, cdp: Cdp) -> dict[str, Any]:
        """The line item with its spend today (UTC) and in total, in micros."""
        found = campaigns.line_item_of(cdp, tenant, request.state.principal.advertiser, line_item)
        now = time.time()
        return _with_spend(found, cdp.ad_spend(tenant, line_item, utc_day(now)), now)

    @post("/line-items/{line_item:str}/status", operation_id="setLineItemStatus",
          responses=WRITES | NOT_FOUND | problem_responses(409), status_code=200, sync_to_thread=True)
    def status(self, request: Request, tenant: Tenant, line_item: PathId, data: StatusRequest, cdp: Cdp
               ) -> dict[str, Any]:
        return campaigns.set_status(cdp, tenant, request.state.principal.advertiser, line_item, data.status,
                                    _actor(request))


def _with_spend(record: dict[str, Any], spend: dict[str, int] | None, now: float) -> dict[str, Any]:
    spend = spend or {"spent_today": 0, "spent_total": 0}
    return {**record, **spend, "serving": LiveLineItem.of(record, record["advertiser"]).state(spend, now)}


def _csv(rows: list[dict[str, Any]], filename: str) -> Response[str]:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(ADS_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _ads_report(cdp: CdpStore, tenant: str, advertiser: str | None) -> dict[str, Any]:
    stored = cdp.get_report(tenant, ADS_REPORT) or {}
    lifts = cdp.get_report(tenant, INCREMENTALITY_REPORT) or {}

    def mine(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if advertiser is None or r["advertiser"] == advertiser]

    out = {"rows": mine(stored.get("rows", [])), "incrementality": mine(lifts.get("rows", [])),
           "updated_at": stored.get("updated_at")}
    disabled = [notify.public(w) for w in cdp.list_webhooks(tenant) if w["status"] == "disabled"
                and (advertiser is None or w["advertiser"] == advertiser)]
    if disabled:
        out["webhooks_disabled"] = disabled  # what the advertiser must fix to hear from us again
    return out
