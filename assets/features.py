"""Feature tables: per item (text to embed, popularity) and per user (activity, top categories)."""


import dataclasses

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets import DOWNSTREAM, report
from assets.partitions import tenants_partitions
from assets.resources import LodestarResource
from lodestar.embed import model_key
from lodestar.lineage import feature_tables


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="features",
    kinds={"pandas", "parquet"},
    deps=["cdp_items", "cdp_events"],
    description="One row per item: the text the model embeds, its content hash, and decayed popularity.",
    check_specs=[
        AssetCheckSpec("popularity_sane", asset="item_features", blocking=True,
                       description="Popularity is finite everywhere and no single item holds most of it "
                                   "(a symptom of future-dated or otherwise broken events)"),
    ],
)
def item_features(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    settings = lodestar.settings()
    # The content hash names the model and its backend: vectors of another backend make new points.
    result = feature_tables.item_features(files, lodestar.tenant_config(tenant),
                                          model_key(settings.embed_model, settings.embed_backend))
    report(context, f"{result.rows} items, {result.indexable} available, {result.new_texts} new texts")
    metadata = {k: v for k, v in dataclasses.asdict(result).items() if k != "problems"}
    return MaterializeResult(
        metadata={**metadata, "path": MetadataValue.path(str(files.item_features))},
        check_results=[AssetCheckResult(check_name="popularity_sane", passed=not result.problems,
                                        metadata={"problems": "; ".join(result.problems) or "none"})],
    )


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="features",
    kinds={"pandas", "parquet"},
    deps=["cdp_users", "cdp_events", "cdp_items"],
    description="One row per user: event counts, first and last activity, most frequent categories.",
)
def user_features(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    result = feature_tables.user_features(files)
    report(context, f"{result.rows} users, {result.active} with events")
    return MaterializeResult(metadata={**dataclasses.asdict(result), "path": MetadataValue.path(str(files.user_features))})
