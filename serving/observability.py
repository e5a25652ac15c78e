"""What operators see of the API: a request id on every response, one JSON log line per request,
and Prometheus metrics at ``/metrics``.

- **Request id.** ``X-Request-ID`` is taken from the request when it is a sane token (letters,
  digits, ``._:-``, at most 128 characters: what load balancers and tracing systems send), else a
  new one is made; it is sent back on every response and is on every log line written while the
  request runs (a context variable, which Litestar copies into the worker threads of sync handlers).
- **Logs.** Every log record of the process becomes one JSON object on a line
  (:func:`json_logging_config`, given to Litestar, which configures the standard ``logging``).
- **Metrics.** Litestar's Prometheus middleware counts requests and times them by route template,
  method and status (``lodestar_requests_total``, ``lodestar_request_duration_seconds``,
  ``lodestar_requests_error_total``, ``lodestar_requests_in_progress``); this module adds the
  requests of each tenant (``lodestar_tenant_requests_total``), and, read when scraped, the age of
  each tenant's served index version and the events stored per tenant.

Tenant names are labels, so ``/metrics`` is for the operator only: it needs ``LODESTAR_ADMIN_KEY``
as a bearer token, like the other operator routes (Prometheus sends it with
``authorization: {credentials_file: ...}``). Opaque tenant labels were the other choice; they would
leave the counts public and make every dashboard need a lookup table, while the operator already
sees every tenant.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from litestar import Response, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.logging.config import LoggingConfig
from litestar.middleware import ASGIMiddleware
from litestar.plugins import InitPluginProtocol
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lodestar.keys import OPERATOR
from serving.auth import SCOPE

REQUEST_ID_HEADER = "x-request-id"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

access_log = logging.getLogger("lodestar.access")
log = logging.getLogger("lodestar.serving")

TENANT_REQUESTS = Counter("lodestar_tenant_requests_total", "Requests answered per tenant, by status class",
                          ["tenant", "status_class"])


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


# -- logs -----------------------------------------------------------------------------------------
# A record's own attributes; the rest came as ``extra``. uvicorn's color_message repeats the message.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``message``, ``request_id`` when a
    request is running, every ``extra`` field, and ``error`` with the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        entry.update((k, v) for k, v in vars(record).items()
                     if k not in _RECORD_ATTRIBUTES and k != "request_id" and v is not None)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["error"] = record.exc_text
        return json.dumps(entry, default=str)


class RequestIdFilter(logging.Filter):
    """Stamps the running request's id on a record where it is made: Litestar's queue handler
    may format it in its own thread, where the context variable is not set."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


def json_logging_config(level: str = "INFO") -> LoggingConfig:
    """Litestar's logging configuration (its queue handler, so that writing a line never blocks
    the event loop) with every record as a JSON line: the app's, Litestar's and uvicorn's."""
    # Litestar's default handlers for this Python version; from 3.12 on its queue handler leaves the
    # formatting to the console handler (it has no formatter to replace).
    handlers = {name: {**spec, "filters": ["request_id"], **({"formatter": "json"} if "formatter" in spec else {})}
                for name, spec in LoggingConfig().handlers.items()}
    return LoggingConfig(
        formatters={"json": {"()": JsonFormatter}},
        filters={"request_id": {"()": RequestIdFilter}},
        handlers=handlers,
        loggers={
            "litestar": {"level": level, "handlers": ["queue_listener"], "propagate": False},
            "lodestar": {"level": level},
        },
        root={"handlers": ["queue_listener"], "level": level},
    )


# -- the request id, the request log line and the per-tenant count ---------------------------------
class RequestLogMiddleware(ASGIMiddleware):
    """Gives the request its id, sends it back as ``X-Request-ID`` and writes the request's line.
    Outermost of the app's middleware, so what the others answer (413, 503) is logged too."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = request_id_from(scope)
        scope["state"]["request_id"] = rid
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500  # if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        finally:
            tenant = scope["state"].get("tenant")
            if tenant is not None:
                TENANT_REQUESTS.labels(tenant, f"{status // 100}xx").inc()
            log_request(scope, status, round((time.perf_counter() - started) * 1000, 3), tenant)
            request_id.reset(token)


def log_request(scope: Scope, status: int, duration_ms: float | None, tenant: str | None, **extra: object) -> None:
    access_log.info("%s %s %d", scope["method"], scope["path"], status, extra={
        "method": scope["method"], "path": scope["path"], "route": scope.get("path_template"),
        "status": status, "duration_ms": duration_ms, "tenant": tenant, **extra,
    })


async def stamp_unrouted(message: Message, scope: Scope) -> None:
    """``before_send`` hook for what no route answered (404 for an unknown path, 405): Litestar
    runs middleware for routes only, so these get their id and line here (without a duration)."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP:
        return
    if "request_id" in scope.setdefault("state", {}):
        return
    rid = scope["state"]["request_id"] = request_id_from(scope)
    message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
    token = request_id.set(rid)
    try:
        log_request(scope, message["status"], None, None)
    finally:
        request_id.reset(token)


# -- /metrics -------------------------------------------------------------------------------------
class ServedStateCollector(Collector):
    """Metrics read from what the app serves, when scraped: the indexes already loaded (no index is
    opened for a scrape) and, for the tenants loaded, one indexed count each from the CDP store: a
    scrape costs what this process serves, not what the CDP holds (a thousand idle tenants add nothing)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        age = GaugeMetricFamily("lodestar_index_version_age_seconds",
                                "Seconds since the served index version of a tenant was published", labels=["tenant"])
        events = GaugeMetricFamily("lodestar_events_stored",
                                   "Events stored in the CDP store per tenant (the tenants this process has loaded)",
                                   labels=["tenant"])
        indexes, cdp = self.state.get("indexes"), self.state.get("cdp")
        now = time.time()
        loaded = indexes.loaded() if indexes is not None else {}
        for tenant, published in loaded.items():  # loaded versions only: a scrape opens nothing
            published_at = published.record.get("published_at")
            if published_at is not None:
                age.add_metric([tenant], max(0.0, now - float(published_at)))
            if cdp is not None:
                events.add_metric([tenant], cdp.count(tenant, "events"))
        yield age
        yield events


# The one auth guard (serving.auth) admits only the operator key here.
@get("/metrics", operation_id="metrics", opt={SCOPE: OPERATOR}, include_in_schema=False, sync_to_thread=True)
def metrics(state: State) -> Response[bytes]:
    """The process's metrics and the served state's, in Prometheus' text format."""
    served = CollectorRegistry(auto_describe=False)
    served.register(ServedStateCollector(state))
    return Response(generate_latest(REGISTRY) + generate_latest(served), media_type=CONTENT_TYPE_LATEST)


class TemplatePrometheusMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware, its labels (``group_path``: the route template) made
    without parsing the request's URL first: the base class builds ``request.url`` on every request
    and then, grouping by template, drops it (4.6 -> 2.2 µs for the request object and its labels,
    in process; py-spy ``--gil`` of a server answering repeated recommendations had put 2.6% of its
    samples in that parse)."""

    def _get_default_labels(self, request: Any) -> dict[str, str | int | float]:
        scope = request.scope
        return {"method": scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"],
                "path": scope["path_template"], "status_code": 200, "app_name": self._config.app_name}


class ObservabilityPlugin(InitPluginProtocol):
    """Request ids, request log lines, Prometheus middleware and ``/metrics``. Listed before
    :class:`serving.limits.RequestLimitsPlugin`, so its middleware wraps the limits' and what a
    limit refuses is logged and counted."""

    def __init__(self) -> None:
        self.prometheus = PrometheusConfig(app_name="lodestar", prefix="lodestar", group_path=True,
                                           exclude=["^/metrics$"], middleware_class=TemplatePrometheusMiddleware)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.middleware[:0] = [RequestLogMiddleware(), self.prometheus.middleware]
        app_config.before_send.append(stamp_unrouted)
        app_config.route_handlers.append(metrics)
        return app_config
