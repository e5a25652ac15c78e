"""Attribution of clicks and conversions to the lists the API served, and to the ads it served."""

import json
import time

import pandas as pd
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
from lodestar import attribution
from lodestar.ads import quality
from lodestar.ads import report as ads_report
from lodestar.ads.incrementality import incrementality
from lodestar.ads.tokens import open_ad_id
from lodestar.cdp import require_tenant
from lodestar.experiments import lifecycle
from lodestar.experiments import report as experiments_report
from lodestar.lineage.files import read_extract, read_parquet
from lodestar.settings import ADS_SECRET_ENV
from lodestar.tenant_config import effective_config


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
        store.put_report(tenant, ads_report.TRAFFIC_REPORT, ads_report.traffic_curve(served, time.time()))
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


def _spend_chart(rows: list[dict]) -> str:
    lines = ["| day | advertiser | served | clicks | spend | conversions | ROAS | spend chart |", "|---|---|---|---|---|---|---|---|"]
    top = max((r["spend"] for r in rows), default=0.0)
    for r in rows:
        lines.append(f"| {r['day']} | {r['advertiser']} | {r['served']} | {r['clicks']} | {r['spend']:.2f} | "
                     f"{r['conversions']} | {r['roas'] if r['roas'] is not None else '—'} | `{bar(r['spend'], top)}` |")
    return "\n".join(lines) if rows else "no ads"


@asset(
    name="ads_report",
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="analytics",
    kinds={"pandas"},
    deps=["cdp_events", "cdp_items"],
    description="Retail media per line item and day: impressions and clicks on ads, charged clicks and spend (the "
                "ledger), conversions attributed to the last ad click (or view, per tenant setting), revenue, ROAS; "
                "and per campaign its incrementality against its held-out users (lift, incremental conversions and "
                "revenue, iROAS, 95% intervals); kept as reports in the CDP store (advertisers read their own rows).",
)
def ads_report_asset(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    with lodestar.cdp() as store:
        line_items = {r["id"]: r for r in store.list_line_items(tenant)}
        rows, lifts = [], []
        if line_items:
            settings = effective_config(require_tenant(store, tenant)["config"]).ads
            items = read_extract(files, "items")
            catalog = {r.id: {"id": r.id, "categories": list(r.categories), "attributes": json.loads(r.attributes)}
                       for r in items.itertuples()} if len(items) else {}
            events = read_extract(files, "events")
            wanted = events[events["ad_id"].notna() | (events["type"] == "purchase")] if "ad_id" in events else \
                events[events["type"] == "purchase"]
            secret = lodestar.settings().secret("ads", ADS_SECRET_ENV)
            records = wanted.to_dict("records")
            serves = store.read_ad_serves(tenant)
            charges = store.ad_charges(tenant)
            rows = ads_report.ads_report(charges, records, catalog, line_items,
                                         settings, lambda ad_id: open_ad_id(secret, tenant, ad_id), serves)
            lifts = incrementality(serves, [e for e in records if e["type"] == "purchase"], line_items, charges,
                                   catalog, settings.attribution_days)
        store.put_report(tenant, ads_report.REPORT, rows)
        store.put_report(tenant, ads_report.INCREMENTALITY_REPORT, lifts)
    spend = sum(r["spend"] for r in rows)
    report(context, f"{len(line_items)} line items, spend {spend:.2f}, "
                    f"{sum(r['conversions'] for r in rows)} attributed conversions")
    return MaterializeResult(metadata={
        "line items": len(line_items), "spend": spend, "charged clicks": sum(r["charged_clicks"] for r in rows),
        "attributed conversions": sum(r["conversions"] for r in rows),
        "incrementality": MetadataValue.md(pd.DataFrame(lifts).to_markdown(index=False) if lifts else "no campaign "
                                           "with served ads to known users yet"),
        "by line item": MetadataValue.md(pd.DataFrame(ads_report.totals(rows)).to_markdown(index=False) if rows
                                         else "no ads"),
        "by advertiser and day": MetadataValue.md(_spend_chart(ads_report.totals(rows, ("day", "advertiser")))),
    })


@asset(
    name="ad_quality_model",
    partitions_def=tenants_partitions,
    automation_condition=DOWNSTREAM,
    group_name="analytics",
    kinds={"sklearn"},
    deps=["cdp_events", "item_features"],
    description="Retail media's ad-quality model: each ad's click probability (logistic regression on relevance, "
                "position, popularity, the line item's smoothed CTR and the placement) from the served ads and their "
                "clicks; evaluated on the latest 20% of serves beside relevance alone and the published model; "
                "published for the auction (eCPM = pCTR x bid) only when not worse than the published one.",
    check_specs=[AssetCheckSpec("not_worse_than_published", asset="ad_quality_model", blocking=True,
                                description="On the same time-based holdout, the new model's AUC and log loss are "
                                            "not worse than the published model's (else it is not published)")],
)
def ad_quality_model(context: AssetExecutionContext, lodestar: LodestarResource) -> MaterializeResult:
    tenant = context.partition_key
    files = lodestar.files(tenant)
    with lodestar.cdp() as store:
        serves = store.read_ad_serves(tenant) if store.list_line_items(tenant) else []
        events = read_extract(files, "events")
        # Serves newer than the extract's latest event (less an hour for their clicks to come back)
        # have no label yet: they would count as unclicked.
        horizon = (float(events["ts"].max()) if len(events) else 0.0) - 3600
        serves = [s for s in serves if s["ts"] <= horizon]
        clicked = set(events.loc[(events["type"] == "click") & events["ad_id"].notna(), "ad_id"]) \
            if len(events) and "ad_id" in events else set()
        items = read_parquet(files.item_features) if files.item_features.is_file() else pd.DataFrame()
        popularity = dict(zip(items["id"], items["popularity"], strict=True)) if len(items) else {}
        prices = {i: float(p) for i, a in zip(items["id"], items["attributes"], strict=True) if len(items)
                  and isinstance(p := json.loads(a or "{}").get("price"), (int, float)) and p > 0} if len(items) else {}
        stored = (store.get_report(tenant, quality.REPORT) or {}).get("rows") or []
        published = quality.QualityModel.of(stored[0]) if stored else None
        candidate = quality.train(quality.training_data(serves, clicked, popularity, prices), published, time.time())
        if candidate.publish and candidate.model is not None:
            store.put_report(tenant, quality.REPORT, [candidate.model.as_dict()])
    report(context, f"ad quality: {candidate.reason}")
    metrics = candidate.metrics
    table = ["| model | AUC | log loss | calibration error |", "|---|---|---|---|"] + [
        f"| {name} | {metrics[name]['auc']} | {metrics[name]['log_loss']} | {metrics[name]['calibration_error']} |"
        for name in ("model", "relevance_only", "published") if name in metrics]
    return MaterializeResult(
        metadata={"serves": metrics.get("serves", 0), "clicks": metrics.get("clicks", 0),
                  "published": candidate.publish, "reason": candidate.reason,
                  "holdout": MetadataValue.md("\n".join(table) if len(table) > 2 else candidate.reason)},
        check_results=[AssetCheckResult(check_name="not_worse_than_published",
                                        passed=not candidate.regressed,
                                        metadata={"reason": candidate.reason})])
