"""The code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here.

``defs`` is a ``@dg.definitions`` function: Dagster calls it when it loads the code location, and
only then are the settings read (sensor intervals, the rebuild cron). Importing this module reads
nothing and opens nothing.
"""

from __future__ import annotations

from dagster import (
    AssetsDefinition,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    definitions,
    in_process_executor,
    load_assets_from_modules,
)

from assets import analytics, audiences, embeddings, extracts, features, index, model
from assets.resources import LodestarResource
from lodestar.settings import Settings
from pipelines.jobs import connector_import, extract_job, materialize_tenant
from pipelines.recovery import install_claim_backoff
from pipelines.sensors import build_schedule, build_sensors

ASSET_MODULES = (extracts, features, embeddings, model, index, analytics, audiences)


def all_assets() -> list[AssetsDefinition]:
    """Every asset of a tenant's lineage (for ``materialize`` in tests and benchmarks)."""
    return list(load_assets_from_modules(list(ASSET_MODULES)))


def build_definitions(settings: Settings, lodestar: LodestarResource | None = None) -> Definitions:
    """Lodestar's Definitions for the given settings (and resource: by default one reading the environment)."""
    automation = AutomationConditionSensorDefinition(
        "lodestar_automation",
        target=AssetSelection.all(),
        default_status=DefaultSensorStatus.RUNNING,
        # Short, so that downstream work starts soon after the change sensor's extract run.
        minimum_interval_seconds=settings.automation_interval_s,
        description="Materializes what is downstream of updated extracts (declarative automation).",
    )
    return Definitions(
        assets=all_assets(),
        jobs=[materialize_tenant, extract_job, connector_import],
        sensors=[*build_sensors(settings), automation],
        schedules=[build_schedule(settings)],
        resources={"lodestar": lodestar or LodestarResource()},
        # Every step of a run in the run's own process: a step process each would cost seconds of
        # imports per step (the embedding model loads once per run), and a tenant's steps form a chain.
        executor=in_process_executor,
    )


@definitions
def defs() -> Definitions:
    """The code location's Definitions, with the settings of the environment it loads in. Every run
    worker the daemon launches loads them, so this is also where its pool waits learn to back off
    instead of spinning a core (pipelines.recovery.install_claim_backoff)."""
    install_claim_backoff()
    return build_definitions(Settings.from_env())
