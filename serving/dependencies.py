"""What handlers receive, by Litestar dependency injection: the one place that knows where the
lifespan keeps the long-lived collaborators (``app.state``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import anyio
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation

from lodestar.cdp import CdpStore
from lodestar.embed import Embedder
from lodestar.index import IndexStore, PublishedVersion
from lodestar.settings import Settings
from lodestar.tenant_config import TenantConfig
from lodestar.user_state import UserStates
from serving.ads import TenantAds
from serving.console.gate import SignInGate
from serving.console.pipeline import Pipeline
from serving.experiments import TenantExperiments
from serving.indexes import TenantIndexes
from serving.quotas import EventQuotas
from serving.served_log import ServedLog
from serving.tenant_configs import TenantConfigs


def provide_tenant(request: ASGIConnection) -> str:
    """The tenant the API key resolved to (set by the guard; never from a path or body)."""
    return request.state.tenant


def provide_cdp(state: State) -> CdpStore:
    return state.cdp


async def provide_published(state: State, tenant: str, config: TenantConfig) -> PublishedVersion:
    """The tenant's published index version and its model (503 before the first publish): the
    open one at once, or, when the pointer is due a look or the version must be opened, from a
    worker thread (either may read files or the network).

    It takes ``config`` without reading it: so that a handler's request-scoped dependencies make a
    chain (tenant, then config, then published), which Litestar resolves one after the other.
    Dependencies of the same depth it resolves concurrently, in a task group: about 50 µs a
    request for two of them on this machine, 160 µs for nine (see :class:`Services`)."""
    indexes: TenantIndexes = state.indexes
    return indexes.current(tenant) or await anyio.to_thread.run_sync(indexes.get, tenant)


async def provide_config(request: ASGIConnection, state: State, tenant: str) -> TenantConfig:
    """The tenant's effective configuration, parsed once per change: as the guard read it for this
    request (to check its quotas), else read now, off the event loop."""
    config = getattr(request.state, "config", None)
    if config is not None:
        return config
    configs: TenantConfigs = state.configs
    return await anyio.to_thread.run_sync(configs.get, tenant)


def provide_settings(state: State) -> Settings:
    return state.settings


def provide_index_store(state: State) -> IndexStore:
    return state.index_store


def provide_console_pipeline(state: State) -> Pipeline:
    return state.console_pipeline


def provide_signin_gate(state: State) -> SignInGate:
    return state.signin_gate


def provide_ads(state: State) -> TenantAds:
    return state.ads


def provide_configs(state: State) -> TenantConfigs:
    return state.configs


def provide_embedder(state: State) -> Embedder:
    return state.embedder


def provide_user_states(state: State) -> UserStates:
    return state.user_states


def provide_indexes(state: State) -> TenantIndexes:
    return state.indexes


def provide_embedder_loaded(state: State) -> threading.Event:
    return state.embedder_loaded


@dataclass(frozen=True, slots=True)
class Services:
    """The long-lived collaborators of the routes an app calls on every page view (recommendations,
    similar items, search, events), taken from the app state in one step (:func:`services`).

    Those routes do not declare each collaborator as a dependency: Litestar resolves the
    dependencies of one depth concurrently, each in a task of a task group, and for
    ``GET /v1/users/{id}/recommendations``'s nine that cost about 160 µs a request on this 2-core
    machine against 27 µs for the same handler with three dependencies in a chain (measured with a
    bare Litestar app, in-process). The other routes, called by people rather than on every page
    view, keep one dependency per collaborator."""

    cdp: CdpStore
    embedder: Embedder
    served_log: ServedLog
    user_states: UserStates
    experiments: TenantExperiments
    ads: TenantAds
    event_quotas: EventQuotas
    in_process: bool = False  # what the reads need is all in this process (serving.loop)


def services(state: State) -> Services:
    """The collaborators of the page-view routes (the lifespan made them once)."""
    return state.services


# What a handler declares to receive a collaborator (by parameter name). The collaborators are
# objects, not request data: Litestar must not try to validate them as such.
Tenant = NamedDependency[str]
Cdp = NamedDependency[SkipValidation[CdpStore]]
Published = NamedDependency[SkipValidation[PublishedVersion]]
Config = NamedDependency[SkipValidation[TenantConfig]]
EmbedderDep = NamedDependency[SkipValidation[Embedder]]
UserStatesDep = NamedDependency[SkipValidation[UserStates]]
Indexes = NamedDependency[SkipValidation[TenantIndexes]]
EmbedderLoaded = NamedDependency[SkipValidation[threading.Event]]
SettingsDep = NamedDependency[SkipValidation[Settings]]
IndexStoreDep = NamedDependency[SkipValidation[IndexStore]]
PipelineDep = NamedDependency[SkipValidation[Pipeline]]
Configs = NamedDependency[SkipValidation[TenantConfigs]]
SignInGateDep = NamedDependency[SkipValidation[SignInGate]]
AdsDep = NamedDependency[SkipValidation[TenantAds]]

# The API's tenant comes from its key; console pages name theirs in the path (``/console/t/{tenant}``),
# which Litestar hands to the same providers under the same name.
API_DEPENDENCIES = {"tenant": Provide(provide_tenant, sync_to_thread=False)}
DEPENDENCIES = {
    "cdp": Provide(provide_cdp, sync_to_thread=False),
    "published": Provide(provide_published),
    "config": Provide(provide_config),
    "embedder": Provide(provide_embedder, sync_to_thread=False),
    "user_states": Provide(provide_user_states, sync_to_thread=False),
    "indexes": Provide(provide_indexes, sync_to_thread=False),
    "embedder_loaded": Provide(provide_embedder_loaded, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "index_store": Provide(provide_index_store, sync_to_thread=False),
    "console_pipeline": Provide(provide_console_pipeline, sync_to_thread=False),
    "configs": Provide(provide_configs, sync_to_thread=False),
    "signin_gate": Provide(provide_signin_gate, sync_to_thread=False),
    "ads": Provide(provide_ads, sync_to_thread=False),
}
