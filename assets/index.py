"""The tenant's vector index: a new immutable version is built and checked, then published."""


from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets import DOWNSTREAM, PUBLISH, report
from lodestar import stages
from pipelines.partitions import FULL_REBUILD_TAG, tenants_partitions
from pipelines.resources import LodestarResource


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="index",
    kinds={"qdrant"},
    deps=["item_embeddings", "item_features", "collab_model"],
    description="A new Qdrant index version for the tenant, optimized, not yet served: a copy of the published "
                "version plus the changed items when few changed and the model did not, else built in full.",
    check_specs=[
        AssetCheckSpec("point_count_matches_items", asset="tenant_index", blocking=True,
                       description="The version holds exactly one point per available item"),
        AssetCheckSpec("canary_query", asset="tenant_index", blocking=True,
                       description="The version opens read-only and answers a nearest-neighbour query"),
    ],
)
def tenant_index(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    index_store = lodestar.index_store()
    full = context.run.tags.get(FULL_REBUILD_TAG) == "true"
    stats, probe = stages.build_index(files, index_store, tenant, lodestar.tenant_config(tenant), full=full)
    report(context, f"version {stats['version']} built {stats['mode']} with {stats['points']} points: {stats['why']}")
    canary = stages.canary_problem(index_store, tenant, stats["version"], probe)
    return MaterializeResult(
        metadata={**stats, "path": MetadataValue.path(str(files.root / "index" / "versions" / stats["version"]))},
        check_results=[
            AssetCheckResult(
                check_name="point_count_matches_items",
                passed=stats["points"] == stats["items"],
                metadata={"points": stats["points"], "available_items": stats["items"]},
            ),
            AssetCheckResult(check_name="canary_query", passed=canary is None, metadata={"problem": canary or "none"}),
        ],
    )


@asset(
    partitions_def=tenants_partitions,
    automation_condition=PUBLISH,
    group_name="index",
    kinds={"qdrant"},
    deps=["tenant_index", "offline_evaluation"],
    description="The index version the API serves: swapped atomically once tenant_index and offline_evaluation "
                "passed their blocking checks.",
)
def published_index(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    stats = stages.publish(lodestar.files(tenant), lodestar.index_store(), tenant)
    report(context, f"serving version {stats['version']} (was {stats['previous'] or 'none'})")
    return MaterializeResult(
        metadata={
            "version": stats["version"],
            "previous_version": stats["previous"] or "",
            "points": stats["points"],
            "dropped_versions": ", ".join(stats["dropped"]) or "none",
        }
    )
