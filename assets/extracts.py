"""CDP extracts: each entity of a tenant copied from the CDP store into Parquet."""


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
from lodestar import stages
from pipelines.partitions import FULL_REBUILD_TAG, tenants_partitions
from pipelines.resources import LodestarResource


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
        full = context.run.tags.get(FULL_REBUILD_TAG) == "true"
        with lodestar.cdp() as store:
            stats = stages.extract(store, tenant, entity, lodestar.files(tenant), full=full)
        report(context, f"{stats['rows']} rows ({stats['mode']}: {stats['changed']} changed)")
        import pyarrow.parquet as pq

        columns = pq.read_schema(stats["path"]).names
        missing = [c for c in stages.EXTRACT_COLUMNS[entity] if c not in columns]
        # Users are optional (events imply them); items are needed to serve anything.
        rows_ok = stats["rows"] > 0 or entity == "users"
        return MaterializeResult(
            metadata={
                "rows": stats["rows"],
                "changed": stats["changed"],
                "mode": stats["mode"],
                "deleted": stats.get("deleted", 0),
                "watermark": stats["watermark"] or "",
                "path": MetadataValue.path(stats["path"]),
            },
            check_results=[
                AssetCheckResult(
                    check_name="schema_and_rows",
                    passed=not missing and rows_ok,
                    severity=AssetCheckSeverity.ERROR if missing else AssetCheckSeverity.WARN,
                    metadata={"rows": stats["rows"], "missing_columns": ", ".join(missing) or "none"},
                )
            ],
        )

    return _extract


cdp_items = _extract_asset("items")
cdp_users = _extract_asset("users")
cdp_events = _extract_asset("events")
