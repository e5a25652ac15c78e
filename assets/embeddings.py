"""Item embeddings with sentence-transformers, reused by content hash."""


from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets import DOWNSTREAM, report
from lodestar import stages
from pipelines.partitions import tenants_partitions
from pipelines.resources import LodestarResource


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="embeddings",
    kinds={"pytorch", "parquet"},
    pool="embedding",  # bounds concurrent embedding work across runs (dagster_home/dagster.yaml)
    deps=["item_features"],
    description="A vector per available item from the configured sentence-transformers model.",
    check_specs=[
        AssetCheckSpec(
            "dimension_and_nan", asset="item_embeddings", blocking=True,
            description="Every vector has the model's dimension and no NaN",
        )
    ],
)
def item_embeddings(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    embedder = lodestar.embedder()
    stats = stages.item_embeddings(
        files, embedder, progress=lambda done, total: report(context, f"encoded {done}/{total} new texts")
    )
    report(context, f"{stats['rows']} vectors ({stats['encoded']} encoded, {stats['cached']} from cache)")
    problems = stats.pop("problems")
    return MaterializeResult(
        metadata={**stats, "path": MetadataValue.path(str(files.item_embeddings))},
        check_results=[
            AssetCheckResult(
                check_name="dimension_and_nan",
                passed=not problems,
                metadata={"dimension": stats["dimension"], "problems": "; ".join(problems) or "none"},
            )
        ],
    )
