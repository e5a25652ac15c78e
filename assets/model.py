"""The collaborative model and the offline evaluation that gates publishing."""

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets import DOWNSTREAM, bar, report
from assets.partitions import tenants_partitions
from assets.resources import LodestarResource
from lodestar.lineage.collab_fit import collab_model as fit_collab_model
from lodestar.lineage.evaluation_gate import offline_evaluation as evaluate_offline
from lodestar.lineage.evaluation_gate import regression_problem


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="model",
    kinds={"numpy", "scipy"},
    deps=["cdp_events", "item_embeddings"],
    description="Item-to-item EASE (dense, up to collab.ease_max_items items) or PureSVD factors above that, "
                "fitted on users' positive interactions; its item factors become the index's collab vectors.",
    check_specs=[AssetCheckSpec("finite_model", asset="collab_model", blocking=True,
                                description="Every number of the model is finite (no NaN or infinity)")],
)
def collab_model(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    fitted = fit_collab_model(lodestar.files(tenant), lodestar.tenant_config(tenant))
    how = "fitted" if fitted.refit else "unchanged (same interactions and settings), not refitted"
    report(context, f"{fitted.kind} over {fitted.meta['items']} items, {fitted.meta['interactions']} interactions: {how}")
    return MaterializeResult(
        metadata={"kind": fitted.kind, **fitted.meta, "refit": fitted.refit},
        check_results=[AssetCheckResult(check_name="finite_model", passed=not fitted.problems,
                                        metadata={"problems": "; ".join(fitted.problems) or "none"})],
    )


def _chart(result: dict) -> str:
    """A bar chart of the metrics, as a markdown table the UI renders."""
    rows = ["| model | NDCG@10 | Recall@20 | coverage@20 | NDCG@10 chart |", "|---|---|---|---|---|"]
    top = max(result["lodestar"]["ndcg@10"], result["popular"]["ndcg@10"], 1e-9)
    for name in ("lodestar", "popular"):
        m = result[name]
        rows.append(f"| {name} | {m['ndcg@10']:.4f} | {m['recall@20']:.4f} | {m['coverage@20']:.3f} | "
                    f"`{bar(m['ndcg@10'], top)}` |")
    return "\n".join(rows)


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="evaluation",
    kinds={"pandas"},
    deps=["cdp_events", "item_embeddings"],
    description="The served ranking vs popularity on a per-user temporal holdout (last 20% of each user's "
                "interactions), with a model fitted on the rest: NDCG@10, Recall@20, catalog coverage.",
    check_specs=[
        AssetCheckSpec(
            "no_regression", asset="offline_evaluation", blocking=True,
            description="NDCG@10 is not worse than the published version's by more than evaluation.max_regression",
        )
    ],
)
def offline_evaluation(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    config = lodestar.tenant_config(tenant)
    evaluated = evaluate_offline(files, config, tenant)
    result = evaluated.result
    published = lodestar.index_store().published_record(tenant)
    problem = regression_problem(result, published, config.evaluation.max_regression)
    if evaluated.reused:
        report(context, f"events and configuration unchanged, {evaluated.items_changed_since:.1%} of items changed "
                        "since the last evaluation: its result stands")
    if not evaluated.evaluated:
        report(context, f"not enough data to evaluate ({result['test_users']} test users)")
        metadata = {"status": result["status"], "test_users": result["test_users"], "reused": evaluated.reused}
    else:
        ours, popular = result["lodestar"], result["popular"]
        report(context, f"NDCG@10 {ours['ndcg@10']:.4f} (popular {popular['ndcg@10']:.4f}), "
                        f"Recall@20 {ours['recall@20']:.4f}, {result['test_users']} test users")
        metadata = {
            "ndcg@10": ours["ndcg@10"],
            "recall@20": ours["recall@20"],
            "coverage@20": ours["coverage@20"],
            "popular ndcg@10": popular["ndcg@10"],
            "lift over popular": ours["ndcg@10"] / popular["ndcg@10"] if popular["ndcg@10"] else 0.0,
            "test_users": result["test_users"],
            "model": result["model"],
            "reused": evaluated.reused,
            "strategies": MetadataValue.json(result["strategies"]),
            "chart": MetadataValue.md(_chart(result)),
        }
    return MaterializeResult(
        metadata=metadata,
        check_results=[
            AssetCheckResult(
                check_name="no_regression",
                passed=problem is None,
                metadata={
                    "published ndcg@10": float((published or {}).get("ndcg@10", 0.0)),
                    "why": problem or "not worse than the published version",
                },
            )
        ],
    )
