"""Segment-compatible live ingestion: Lodestar as a destination of any Segment-spec source.

``POST /v1/ingest/segment/batch`` takes Segment's HTTP Tracking API batch (``{"batch": [...]}``, up
to 1,000 messages; ``sentAt``, ``context``, ``writeKey`` and the like are accepted and not stored);
``POST /v1/ingest/segment/{track,identify,page,screen,group,alias}`` take one message, its type from
the path, and ``POST /v1/ingest/segment`` one message with its type in the body (as webhook
destinations post each event). ``/v1/ingest/segment/v1/batch`` answers too, so that Segment's libraries, which post to
``<host>/v1/batch``, work with ``host`` set to ``https://<lodestar>/v1/ingest/segment``.

The key is the tenant's API key with the ``events`` scope, as a bearer token or, as Segment's
libraries send their write key, as the user name of HTTP Basic credentials. Messages are converted
by :mod:`lodestar.connectors.segment` with the tenant's ``connectors.segment`` mapping, then stored
exactly as ``POST /v1/events`` stores events (:func:`serving.controllers.store_events`): the same
validation, the same reply (``rejected`` and ``notes`` index the request's messages), and a 200 only
once the events, the identify traits and the catalog gaps they fill are durable.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, post
from litestar.datastructures import State
from litestar.params import Parameter

from lodestar.cdp import EVENTS, CdpStore
from lodestar.connectors import segment
from lodestar.connectors.importing import (
    Gathered,
    Mapping,
    convert,
    fill_catalog_gaps,
    merge_profiles,
    validated,
)
from lodestar.errors import InvalidInput
from lodestar.records import parse_item, parse_user
from lodestar.tenant_config import TenantConfig
from serving.auth import BASIC_KEY, SCOPE
from serving.controllers import PathId, store_events
from serving.dependencies import Config, Services, Tenant, services
from serving.openapi import SECURED, WRITES
from serving.schemas import EventsAccepted, RejectedEvent

CALLS = ("track", "identify", "page", "screen", "group", "alias")
Atomic = Annotated[bool, Parameter(description="reject the whole batch if any message is invalid")]


class SegmentBatch(msgspec.Struct):
    """Segment's batch body; fields besides ``batch`` (sentAt, context, writeKey, ...) are accepted."""

    batch: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=1000)]


class SegmentIngestController(Controller):
    security = SECURED
    path = "/v1/ingest/segment"
    tags = ["events"]
    opt = {SCOPE: EVENTS, BASIC_KEY: True}

    @post("/batch", operation_id="ingestSegmentBatch", responses=WRITES, status_code=200, sync_to_thread=True)
    def batch(self, state: State, tenant: Tenant, data: SegmentBatch, config: Config,
              atomic: Atomic = False) -> EventsAccepted:
        """Store a Segment batch: ``track`` messages of the E-commerce Spec's events become events, one per
        product; ``identify`` traits become the user's profile attributes; ``page``, ``screen``, ``group``
        and ``alias`` carry no product and are noted, not stored. The mapping is the tenant's
        ``connectors.segment`` configuration."""
        return ingest(tenant, data.batch, services(state), config, atomic)

    @post("/v1/batch", operation_id="ingestSegmentLibraryBatch", responses=WRITES, status_code=200,
          sync_to_thread=True)
    def library_batch(self, state: State, tenant: Tenant, data: SegmentBatch, config: Config,
                      atomic: Atomic = False) -> EventsAccepted:
        """The batch route where Segment's libraries post (``<host>/v1/batch``) when their host is
        ``https://<lodestar>/v1/ingest/segment``; the same as ``/v1/ingest/segment/batch``."""
        return ingest(tenant, data.batch, services(state), config, atomic)

    @post("/", operation_id="ingestSegmentMessage", responses=WRITES, status_code=200, sync_to_thread=True)
    def message(self, state: State, tenant: Tenant, data: dict[str, Any], config: Config) -> EventsAccepted:
        """One message with its ``type`` in the body, as webhook destinations (Segment's, RudderStack's) post
        each event; a body with ``batch`` is taken as a batch."""
        if isinstance(data.get("batch"), list):
            if not 1 <= len(data["batch"]) <= 1000:
                raise InvalidInput("batch: 1 to 1000 messages", field="batch")
            return ingest(tenant, data["batch"], services(state), config, atomic=False)
        return ingest(tenant, [data], services(state), config, atomic=True)

    @post("/{call:str}", operation_id="ingestSegmentCall", responses=WRITES, status_code=200, sync_to_thread=True)
    def call(self, state: State, tenant: Tenant, call: PathId, data: dict[str, Any], config: Config) -> EventsAccepted:
        """One message of Segment's HTTP Tracking API (``track``, ``identify``, ...): its type is the path's."""
        if call not in CALLS:
            raise InvalidInput(f"unknown call {call!r}: POST a batch to /v1/ingest/segment/batch, or one message to "
                               f"/v1/ingest/segment/CALL where CALL is one of {', '.join(CALLS)}", field="call")
        return ingest(tenant, [{**data, "type": call}], services(state), config, atomic=True)


def ingest(tenant: str, messages: list[Any], app: Services, config: TenantConfig, atomic: bool) -> EventsAccepted:
    cdp = app.cdp
    mapping = Mapping(config.connectors["segment"])
    now = time.time()
    candidates: list[tuple[int, Any]] = []
    notes: list[RejectedEvent] = []
    item_fields: dict[tuple[str, str], tuple[int, float | None, dict[str, Any]]] = {}  # (user, item) of an event
    profiles = Gathered()
    for index, message in enumerate(messages):
        try:
            result = convert(segment, message, mapping, default_ts=now)
        except InvalidInput as exc:
            candidates.append((index, exc))
            continue
        if result.skipped:
            notes.append(RejectedEvent(index=index, reason=f"not stored: {result.skipped}"))
        checked = validated(result, default_ts=now)
        candidates.extend((index, problem) for problem in checked.refused)
        candidates.extend((index, event) for event in checked.events)
        fields_of = {item["id"]: item for item in checked.items}
        for event in checked.events:
            if event["item_id"] in fields_of:
                item_fields[(event["user_id"], event["item_id"])] = (index, result.ts, fields_of[event["item_id"]])
        # The users of track messages are not made user records here (POST /v1/events does not
        # either); identify traits are, and an import's users are.
        profiles.add(index, result.ts, [u for u in checked.users if u["attributes"]])
    profile_rows = [parse_user(row) for _index, row in merge_profiles(cdp, tenant, profiles)]

    def write(valid: list[dict[str, Any]]) -> None:
        """Profiles, and the catalog gaps the valid events' products fill (new items past the
        tenant's item quota left out, noted), before the events."""
        stored = {(e["user_id"], e["item_id"]) for e in valid}
        items = Gathered()
        for key, (index, ts, item) in item_fields.items():
            if key in stored:
                items.add(index, ts, [item])
        rows = _catalog_rows(cdp, tenant, config, items, notes)
        if profile_rows:
            cdp.upsert_users(tenant, profile_rows)
        if rows:
            cdp.upsert_items(tenant, rows)

    return store_events(tenant, candidates, cdp, config, app.event_quotas, app.ads, atomic, field="batch",
                        what="message(s)", notes=notes, other_writes=write, other_data=bool(profile_rows))


def _catalog_rows(cdp: CdpStore, tenant: str, config: TenantConfig, items: Gathered,
                  notes: list[RejectedEvent]) -> list[dict[str, Any]]:
    quota, count = config.quotas.items, None
    out = []
    for index, row in fill_catalog_gaps(cdp, tenant, items):
        try:
            record = parse_item(row)
        except InvalidInput as exc:
            notes.append(RejectedEvent(index=index, reason=f"the product's fields were not added to the catalog: {exc}"))
            continue
        if quota > 0 and record["id"] in items.created:
            count = cdp.count(tenant, "items") if count is None else count
            if count >= quota:
                notes.append(RejectedEvent(index=index, reason=f"item {record['id']} was not added to the catalog: the "
                                                               f"tenant has reached its quota of {quota} items"))
                continue
            count += 1
        out.append(record)
    return out
