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
from assets.partitions import tenants_partitions
from assets.resources import LodestarResource
from lodestar.lineage.embeddings import item_embeddings as embed_items


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="embeddings",
    kinds={"onnx", "parquet"},
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
    result = embed_items(
        files, lodestar.embedder(), progress=lambda done, total: report(context, f"encoded {done}/{total} new texts")
    )
    report(context, f"{result.rows} vectors ({result.encoded} encoded, {result.cached} from cache)")
    return MaterializeResult(
        metadata={"rows": result.rows, "dimension": result.dimension, "encoded": result.encoded,
                  "cached": result.cached, "model": result.model,
                  "path": MetadataValue.path(str(files.item_embeddings))},
        check_results=[
            AssetCheckResult(
                check_name="dimension_and_nan",
                passed=not result.problems,
                metadata={"dimension": result.dimension, "problems": "; ".join(result.problems) or "none"},
            )
        ],
    )
