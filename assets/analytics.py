"""Attribution of clicks and conversions to the lists the API served."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets import DOWNSTREAM, bar, report
from assets.partitions import tenants_partitions
from assets.resources import LodestarResource
from lodestar import attribution
from lodestar.experiments import lifecycle
from lodestar.experiments import report as experiments_report
from lodestar.lineage.files import read_extract


def _chart(totals) -> str:
    rows = ["| strategy | lists | impressions | clicks | conversions | CTR | CTR chart |", "|---|---|---|---|---|---|---|"]
    top = max(float(totals["ctr"].max()), 1e-9) if len(totals) else 1.0
    for r in totals.itertuples():
        rows.append(f"| {r.strategy} | {r.lists} | {r.impressions} | {r.clicks} | {r.conversions} | {r.ctr:.2%} | "
                    f"`{bar(r.ctr, top)}` |")
    return "\n".join(rows)


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="analytics",
    kinds={"pandas", "parquet"},
    deps=["cdp_events"],
    description="Impressions, clicks, conversions and CTR by strategy and by day, from the API's served-list "
                "log and the events that carry its recommendation_id; with the events per day, kept as reports in "
                "the CDP store for the console.",
)
def attribution_report(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    events = read_extract(files, "events")
    with lodestar.cdp() as store:
        served = store.read_served(tenant)
        table = attribution.attribute(served, events)
        # For the console (which reads the CDP store, never the pipeline's files).
        store.put_report(tenant, "attribution", attribution.as_rows(table))
        store.put_report(tenant, "activity", attribution.activity(events))
    path = files.attribution
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(path, index=False)
    totals = attribution.by_strategy(table)
    report(context, f"{int(totals['lists'].sum()) if len(totals) else 0} served lists, "
                    f"{int(totals['clicks'].sum()) if len(totals) else 0} attributed clicks")
    return MaterializeResult(metadata={
        "served lists": int(totals["lists"].sum()) if len(totals) else 0,
        "clicks": int(totals["clicks"].sum()) if len(totals) else 0,
        "days": int(table["day"].nunique()) if len(table) else 0,
        "by strategy": MetadataValue.md(_chart(totals)),
        "by day": MetadataValue.md(table.to_markdown(index=False) if len(table) else "no served lists yet"),
        "path": MetadataValue.path(str(path)),
    })


@asset(
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="analytics",
    kinds={"pandas", "scipy"},
    deps=["cdp_events"],
    description="Each experiment's report per variant (units, lists, impressions, clicks, conversions, revenue; at "
                "its fixed horizon each metric's lift over control with its 95% interval and p-value; the sample-ratio "
                "check; the verdict), and the baselines that size new experiments; kept as reports in the CDP store.",
)
def experiment_report(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    events = read_extract(lodestar.files(tenant), "events")
    with lodestar.cdp() as store:
        lists = experiments_report.per_list(store.read_served(tenant), events)
        reports = [experiments_report.experiment_report(record, lists) for record in store.list_experiments(tenant)]
        store.put_report(tenant, lifecycle.REPORT, reports)
        store.put_report(tenant, lifecycle.BASELINES_REPORT, experiments_report.baselines(lists))
    report(context, f"{len(reports)} experiments: " + ("; ".join(f"{r['experiment']}: {r['verdict']}" for r in reports)
                                                       or "none"))
    return MaterializeResult(metadata={
        "experiments": len(reports),
        "verdicts": MetadataValue.md("\n".join(f"- **{r['experiment']}**: {r['verdict']}" for r in reports) or "none"),
    })
