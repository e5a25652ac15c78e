"""The code location: ``dagster dev -w workspace.yaml`` loads ``defs`` from here."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    load_assets_from_modules,
)

from assets import analytics, embeddings, extracts, features, index, model
from pipelines.partitions import tenants_partitions
from pipelines.resources import LodestarResource

MATERIALIZE_TENANT = "materialize_tenant"

all_assets = load_assets_from_modules([extracts, features, embeddings, model, index, analytics])

materialize_tenant = define_asset_job(
    MATERIALIZE_TENANT,
    selection=AssetSelection.all(),
    partitions_def=tenants_partitions,
    description="Every asset of one tenant, from CDP extract to published index.",
)

defs = Definitions(
    assets=all_assets,
    jobs=[materialize_tenant],
    resources={"lodestar": LodestarResource()},
)
