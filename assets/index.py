"""The tenant's vector index: a new immutable version is built and checked, then published."""


from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    asset,
)

from assets import DOWNSTREAM, PUBLISH, report
from assets.partitions import FULL_REBUILD_TAG, tenants_partitions
from assets.resources import LodestarResource
from lodestar.cdp import audit_entry
from lodestar.lineage.index_build import build_index
from lodestar.lineage.publishing import canary_problem, publish


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
    index_store = lodestar.index_store()
    full = context.run_tags.get(FULL_REBUILD_TAG) == "true"
    built = build_index(lodestar.files(tenant), index_store, tenant, lodestar.tenant_config(tenant), full=full)
    report(context, f"version {built.version} built {built.mode} with {built.points} points: {built.why}")
    canary = canary_problem(index_store, tenant, built.version, built.probe)
    return MaterializeResult(
        metadata={**built.metadata(), "location": index_store.location(tenant, built.version)},
        check_results=[
            AssetCheckResult(
                check_name="point_count_matches_items",
                passed=built.points == built.items,
                metadata={"points": built.points, "available_items": built.items},
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
    index_store = lodestar.index_store()
    published = publish(lodestar.files(tenant), index_store, tenant)
    report(context, f"serving version {published.version} (was {published.previous or 'none'})")
    if published.version != published.previous:
        # The audit log keeps every published version with its evaluation (the console's chart of
        # NDCG@10 over time), long after the version itself was dropped.
        record = index_store.published_record(tenant) or {}
        info = {k: v for k, v in record.items() if k not in ("version", "published_at")}
        with lodestar.cdp() as store:
            store.append_audit(tenant, audit_entry(f"pipeline:{context.run_id}", "index.publish", published.version,
                                                   {"version": published.previous}, {"version": published.version, **info}))
    return MaterializeResult(
        metadata={
            "version": published.version,
            "previous_version": published.previous or "",
            "points": published.points,
            "dropped_versions": ", ".join(published.dropped) or "none",
        }
    )
