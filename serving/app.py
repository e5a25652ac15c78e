"""The Litestar application factory."""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from litestar import Litestar, Router
from litestar.types import Receive, Scope, Send
from threadpoolctl import threadpool_limits

from lodestar.cdp import open_cdp
from lodestar.embed import Embedder
from lodestar.index import open_index_store
from lodestar.settings import ADS_SECRET_ENV, Settings
from lodestar.user_state import UserStates
from serving.ads import TenantAds
from serving.auth import require_principal
from serving.console import SESSION_STORE, console_app_config, sweep_sessions
from serving.console.gate import SignInGate
from serving.console.pipeline import Pipeline
from serving.controllers import (
    AdsController,
    AdvertiserController,
    AuditController,
    ConfigController,
    EventController,
    ExperimentController,
    HealthController,
    ItemController,
    KeyController,
    OperatorController,
    PreferenceController,
    RecommendationController,
    SearchController,
    SegmentController,
    UserController,
    UserSegmentController,
)
from serving.dependencies import API_DEPENDENCIES, DEPENDENCIES, Services
from serving.errors import EXCEPTION_HANDLERS
from serving.experiments import TenantExperiments
from serving.indexes import TenantIndexes
from serving.ingest import SegmentIngestController
from serving.key_usage import KeyUsage
from serving.limits import RequestLimits, RequestLimitsPlugin, refuse_early
from serving.loop import reads_in_process
from serving.observability import ObservabilityPlugin, json_logging_config
from serving.openapi import openapi_config
from serving.quotas import EventQuotas, RequestRates
from serving.served_log import ServedLog
from serving.strict import strict_request
from serving.tenant_configs import TenantConfigs

log = logging.getLogger("lodestar.serving")


class LodestarApp(Litestar):
    """The Litestar app with a front door: a request whose credential a quota refused moments ago
    is answered at once (:func:`serving.limits.refuse_early`), before any of the app's middleware,
    so that a tenant flooding past its quota costs the other tenants as little as it can."""

    rates: RequestRates | None = None
    # Set by `lodestar serve` (serving.server) for the process it serves from: see freeze_long_lived.
    freeze_at_startup = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] == "http" and self.rates is not None and await refuse_early(self.rates, scope, send):
            return
        await super().__call__(scope, receive, send)


def one_math_thread() -> None:
    """Keeps the process's BLAS (numpy's OpenBLAS) to one thread.

    A request's math is small (a user's EASE scores: a few hundred dot products over the catalog;
    a taste: one mean of up to 50 vectors), and OpenBLAS's own threads do not sleep after a call:
    they spin, waiting for the next. Measured on this 2-core machine, with every MovieLens user
    ranked anew by one client in turn, numpy's second BLAS thread burned 6.9 ms of CPU per request
    (a whole core) while the request itself took 5.2; with one thread, 4.6-5.1 ms per request
    and nothing beside it. That core is the one the other worker (``--workers``), the request log or a
    client needed. Only where ``lodestar serve`` serves from, as :func:`freeze_long_lived`: a
    materialization (the EASE fit inverts a catalog-sized matrix) keeps every thread. Called when
    the app starts, for the libraries loaded by then (numpy's; not scipy's own OpenBLAS, which the
    experiment statistics load on demand, nor torch's OpenMP with the torch embedding backend).
    OpenBLAS's limit is the process's, and threadpoolctl lets the first thread that sets it (this
    one, the event loop's) be the one that changes it."""
    threadpool_limits(limits=1)


# Full collections come after this many younger ones (CPython's default: 10). See freeze_long_lived.
FULL_COLLECTION_EVERY = 100


@functools.cache
def freeze_long_lived(moment: str) -> None:
    """Moves what the process holds (its modules, the app, its collaborators: about 140,000 objects
    before its first request) out of the garbage collector's sight (``gc.freeze``), and makes full
    collections come a tenth as often. Called at two ``moment``\ s, each once per process: when the
    app starts, and when the embedding model has loaded in its own thread (a few thousand objects
    with the default ONNX backend; with ``LODESTAR_EMBED_BACKEND=torch``, or while the ONNX model is
    first exported, sentence-transformers and torch bring about 380,000).

    None of what is frozen is ever garbage, yet every full (generation 2) collection walked all of
    it again: 83-90 ms on this 2-core machine, paid by whichever request was running when one came
    (MovieLens' recommendations: about one request in 1,200). Afterwards a full collection walks
    only what was made since (open tenants, users' kept states, requests in flight): 11-14 ms for
    MovieLens with every user's state kept. CPython (3.11 to 3.13; 3.14's incremental collector
    has no third threshold) starts one when 10 younger collections have run and the objects
    promoted since make a quarter of those that survived the last one; with the survivors now few,
    that came every ~175 requests, so the same walking time was paid as often in total. After 100
    younger collections instead, full collections come about as rarely as before, a seventh as
    long. What a full collection frees (reference cycles that lived long) waits longer: a few
    thousand promoted objects more. A collection first, so that nothing already unreachable is
    frozen (frozen objects are never freed by the collector; freed by reference counting they
    still are); the requests in flight when the model loads (``/ready`` answers 503 until then)
    are frozen with it, once.

    Only where ``lodestar serve`` (or ``lodestar demo``, which serves the same way) serves from: a
    process that creates many apps (the tests) would otherwise freeze each one, never to be
    collected."""
    gc.collect()
    gc.freeze()
    young, middle, _full = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def create_app(settings: Settings | None = None) -> LodestarApp:
    settings = settings or Settings.from_env()
    rates = RequestRates.from_env()  # LODESTAR_RATE_LIMIT_STORAGE, LODESTAR_WORKERS: a bad value stops the start

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        """Opens the long-lived collaborators (handlers receive them through serving.dependencies)
        and closes them at shutdown."""
        cdp = open_cdp(settings)
        index_store = open_index_store(settings)
        indexes = TenantIndexes.from_env(index_store)  # LODESTAR_INDEX_IDLE, LODESTAR_MAX_OPEN_TENANTS
        embedder = Embedder(settings.embed_model, settings.cache_dir, backend=settings.embed_backend,
                            models_dir=settings.models_dir)
        served_log = ServedLog(cdp)
        user_states = UserStates.from_env()  # LODESTAR_USER_STATE_MB
        key_usage = KeyUsage(cdp)
        console_pipeline = Pipeline(settings)
        services = Services(cdp=cdp, embedder=embedder, served_log=served_log, user_states=user_states,
                            experiments=TenantExperiments(cdp),
                            ads=TenantAds(cdp, settings.secret("ads", ADS_SECRET_ENV)), event_quotas=EventQuotas(cdp),
                            in_process=reads_in_process(settings, rates.shared))
        app.state.update(settings=settings, cdp=cdp, index_store=index_store, indexes=indexes, embedder=embedder,
                         served_log=served_log, user_states=user_states, key_usage=key_usage, console_pipeline=console_pipeline,
                         signin_gate=SignInGate(), experiments=services.experiments, ads=services.ads,
                         operator_key=settings.admin_key, rates=rates, event_quotas=services.event_quotas,
                         configs=TenantConfigs(cdp), embedder_loaded=threading.Event(), services=services)

        # Load the model off the event loop so that the first search does not pay for it; /ready
        # waits for it.
        def load() -> None:
            try:
                embedder.warm_up()
            except Exception:  # noqa: BLE001 - /ready keeps answering 503 and the log says why
                log.exception("the embedding model failed to load")
            else:
                if freeze:
                    freeze_long_lived("the embedding model loaded")
                app.state.embedder_loaded.set()

        freeze = getattr(app, "freeze_at_startup", False)
        threading.Thread(target=load, name="load-embedder", daemon=True).start()
        if freeze:
            one_math_thread()
            freeze_long_lived("startup")
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(sweep_sessions, app.stores.get(SESSION_STORE))
                yield
                background.cancel_scope.cancel()
        finally:
            console_pipeline.close()
            key_usage.close()
            served_log.close()
            indexes.close()
            cdp.close()

    console = console_app_config(settings)
    api = Router(path="/", dependencies=API_DEPENDENCIES, route_handlers=[
        RecommendationController, ItemController, SearchController, EventController, SegmentIngestController,
        PreferenceController, UserController, UserSegmentController, SegmentController, KeyController, ConfigController,
        AuditController,
        ExperimentController, AdvertiserController, AdsController, OperatorController, HealthController])
    app = LodestarApp(
        route_handlers=[api, *console["route_handlers"]],
        template_config=console["template_config"],
        stores=console["stores"],
        guards=[require_principal],
        before_request=strict_request,
        dependencies=DEPENDENCIES,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        openapi_config=openapi_config(),
        # In this order: the request log and metrics wrap the limits, so what a limit refuses is
        # logged and counted.
        plugins=[ObservabilityPlugin(), RequestLimitsPlugin(RequestLimits.from_env(), rates)],
        logging_config=json_logging_config(),
    )
    app.rates = rates
    return app
