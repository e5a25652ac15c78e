"""The code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
    load_assets_from_modules,
)

from assets import analytics, embeddings, extracts, features, index, model
from pipelines.definitions_jobs import MATERIALIZE_TENANT, extract_job, materialize_tenant
from pipelines.resources import LodestarResource
from pipelines.sensors import _settings, cdp_changes, nightly_rebuild, tenant_discovery

all_assets = load_assets_from_modules([extracts, features, embeddings, model, index, analytics])

automation = AutomationConditionSensorDefinition(
    "lodestar_automation",
    target=AssetSelection.all(),
    default_status=DefaultSensorStatus.RUNNING,
    # Short, so that downstream work starts soon after the change sensor's extract run.
    minimum_interval_seconds=_settings.automation_interval_s,
    description="Materializes what is downstream of updated extracts (declarative automation).",
)

defs = Definitions(
    assets=all_assets,
    jobs=[materialize_tenant, extract_job],
    sensors=[tenant_discovery, cdp_changes, automation],
    schedules=[nightly_rebuild],
    resources={"lodestar": LodestarResource()},
    # Every step of a run in the run's own process: a step process each would cost seconds of
    # imports per step (the embedding model loads once per run), and a tenant's steps form a chain.
    executor=in_process_executor,
)

__all__ = ["MATERIALIZE_TENANT", "all_assets", "defs"]
