"""CDP extracts: each entity of a tenant copied from the CDP store into Parquet."""


import pyarrow.parquet as pq
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets import report
from assets.partitions import FULL_REBUILD_TAG, tenants_partitions
from assets.resources import LodestarResource
from lodestar.lineage.extracts import EXTRACT_COLUMNS, extract


def _extract_asset(entity: str) -> AssetsDefinition:
    name = f"cdp_{entity}"

    @asset(
        name=name,
        partitions_def=tenants_partitions,
        group_name="cdp",
        kinds={"sqlite", "parquet"},
        description=f"The tenant's {entity} as stored in the CDP, soft-deleted rows flagged.",
        check_specs=[AssetCheckSpec("schema_and_rows", asset=name, description="Expected columns; rows present")],
    )
    def _extract(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
        tenant = context.partition_key
        full = context.run_tags.get(FULL_REBUILD_TAG) == "true"
        with lodestar.cdp() as store:
            result = extract(store, tenant, entity, lodestar.files(tenant), full=full)
        report(context, f"{result.rows} rows ({result.mode}: {result.changed} changed)")
        columns = pq.read_schema(result.path).names
        missing = [c for c in EXTRACT_COLUMNS[entity] if c not in columns]
        # Users are optional (events imply them); items are needed to serve anything.
        rows_ok = result.rows > 0 or entity == "users"
        return MaterializeResult(
            metadata={
                "rows": result.rows,
                "changed": result.changed,
                "mode": result.mode,
                "deleted": result.deleted,
                "watermark": result.watermark or "",
                "path": MetadataValue.path(str(result.path)),
            },
            check_results=[
                AssetCheckResult(
                    check_name="schema_and_rows",
                    passed=not missing and rows_ok,
                    severity=AssetCheckSeverity.ERROR if missing else AssetCheckSeverity.WARN,
                    metadata={"rows": result.rows, "missing_columns": ", ".join(missing) or "none"},
                )
            ],
        )

    return _extract


cdp_items = _extract_asset("items")
cdp_users = _extract_asset("users")
cdp_events = _extract_asset("events")
