"""Audience segments: each tenant's rule and lookalike segments, kept in the CDP store."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets import DOWNSTREAM, bar, report
from assets.partitions import tenants_partitions
from assets.resources import LodestarResource
from lodestar.lineage.segment_refresh import refresh_segments


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="audiences",
    kinds={"pandas"},
    deps=["cdp_users", "cdp_events", "cdp_items", "collab_model"],
    description="The tenant's audience segments (its configuration's `segments`: rules over profiles and recent "
                "behaviour, and lookalikes of a seed in taste space) with their members in the CDP store, for "
                "line-item targeting and GET /v1/users/{id}/segments. Incremental: only users whose events or profile "
                "changed are evaluated again; in full on a new day or when the definitions change.",
)
def audience_segments(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    with lodestar.cdp() as store:
        result = refresh_segments(store, tenant, lodestar.files(tenant), lodestar.tenant_config(tenant))
    report(context, f"{len(result.sizes)} segments ({result.mode}"
                    + (f", {result.changed_users} users changed" if result.mode == "incremental" else "") + "): "
                    + (", ".join(f"{name} {size}" for name, size in result.sizes.items()) or "none defined"))
    top = max(result.sizes.values(), default=0)
    chart = ["| segment | members | chart |", "|---|---|---|"] + [
        f"| {name} | {size} | `{bar(size, top)}` |" for name, size in result.sizes.items()]
    return MaterializeResult(metadata={
        "mode": result.mode, "segments": len(result.sizes), "changed users": result.changed_users,
        **{f"size: {name}": size for name, size in result.sizes.items()},
        "sizes": MetadataValue.md("\n".join(chart) if result.sizes else "no segments defined"),
    })
