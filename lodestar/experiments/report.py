"""The per-variant report of each experiment, and the baselines that size new ones, from the served
log (each list with the unit and the variants it was served under) and the events that carry a
list's ``recommendation_id``: clicks are ``click`` events, conversions ``add_to_cart`` and
``purchase``, revenue the value of purchases, each counted for the list that showed the item."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from lodestar.experiments.statistics import SRM_ALPHA, compare, sample_ratio_mismatch

CONVERSIONS = ("add_to_cart", "purchase")
DAY = 86400.0
BASELINE_DAYS = 28
COUNTS = ("lists", "impressions", "clicks", "conversions", "revenue")


def per_list(served: list[dict[str, Any]], events: pd.DataFrame) -> pd.DataFrame:
    """One row per served list: its unit, endpoint, experiments, time, and what it led to."""
    lists = pd.DataFrame(served, columns=["recommendation_id", "user_id", "unit_id", "endpoint", "items", "ts",
                                          "experiments"])
    if lists.empty:
        return lists.assign(impressions=0, clicks=0, conversions=0, revenue=0.0)
    lists["impressions"] = lists["items"].map(len)
    shown = lists[["recommendation_id", "items"]].explode("items").rename(columns={"items": "item_id"}).dropna()
    if events.empty or "recommendation_id" not in events:
        attributed = pd.DataFrame(columns=["recommendation_id", "item_id", "type", "value"])
    else:
        tagged = events[events["recommendation_id"].notna()]
        value = tagged["value"] if "value" in tagged else pd.Series(0.0, index=tagged.index)
        attributed = tagged.assign(value=value)[["recommendation_id", "item_id", "type", "value"]].merge(
            shown, on=["recommendation_id", "item_id"], how="inner")
    outcome = attributed.assign(
        clicks=(attributed["type"] == "click").astype(int),
        conversions=attributed["type"].isin(CONVERSIONS).astype(int),
        revenue=np.where(attributed["type"] == "purchase", pd.to_numeric(attributed["value"]).fillna(0.0), 0.0),
    ).groupby("recommendation_id")[["clicks", "conversions", "revenue"]].sum()
    lists = lists.merge(outcome, how="left", left_on="recommendation_id", right_index=True)
    return lists.fillna({"clicks": 0, "conversions": 0, "revenue": 0.0})


def unit_metrics(lists: pd.DataFrame) -> pd.DataFrame:
    """Per unit: its counts and its value of each metric (CTR over its impressions, whether it
    converted, its revenue)."""
    units = lists.assign(lists=1).groupby("unit")[list(COUNTS)].sum()
    units["ctr"] = units["clicks"] / units["impressions"].where(units["impressions"] > 0)
    units["conversion_rate"] = (units["conversions"] > 0).astype(float)
    units["revenue_per_user"] = units["revenue"].astype(float)
    return units


def _assigned(lists: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The lists served under ``experiment``, with the variant each was served in."""
    rows = []
    for row in lists.itertuples(index=False):
        for name, variant in row.experiments or ():
            if name == experiment:
                rows.append({**row._asdict(), "variant": variant, "unit": row.unit_id})
    return pd.DataFrame(rows)


def horizon_at(served: pd.DataFrame, names: list[str], needed: dict[str, int], earliest: float) -> float | None:
    """When the fixed horizon was reached: the first time every variant had the units it needs
    (by when each unit was first served) and the minimum duration (from ``earliest``) had passed;
    ``None`` before. Computed from the data alone, it is the same on every later run."""
    if served.empty:
        return None
    first = served.groupby(["variant", "unit"])["ts"].min()
    times = [earliest]
    for name in names:
        seen = first[name].sort_values() if name in first.index.get_level_values(0) else pd.Series(dtype=float)
        if len(seen) < needed[name]:
            return None
        times.append(float(seen.iloc[needed[name] - 1]))
    return max(times)


def experiment_report(record: dict[str, Any], lists: pd.DataFrame, now: float | None = None) -> dict[str, Any]:
    """The experiment's report: per variant its units, lists and impressions; once the fixed
    horizon is reached, the outcomes (clicks, conversions, revenue) and each metric with its lift
    over the control, the lift's interval and the p-value, all over the units and lists served up
    to the horizon (later data never changes them: one look); the sample-ratio check; the verdict."""
    now = time.time() if now is None else now
    served = _assigned(lists, record["name"])
    names = [v["name"] for v in record["variants"]]
    weights = [v["weight"] for v in record["variants"]]
    needed = record["plan"]["units"]
    began = max(record["start"], record.get("created_at") or record["start"])  # a start in the past counts no days
    at = horizon_at(served, names, needed, began + record["min_days"] * DAY)
    if at is not None and at > (record.get("stopped_at") or now):
        at = None
    if at is not None:  # one look: the units and lists up to the horizon, never more
        first = served.groupby("unit")["ts"].transform("min")
        served = served[(served["ts"] <= at) & (first <= at)]
    units = {name: unit_metrics(served[served["variant"] == name]) if len(served) else pd.DataFrame()
             for name in names}
    counts = [len(units[name]) for name in names]
    srm_p = sample_ratio_mismatch(counts, weights)
    ended = record.get("stopped_at") or (record["end"] if record["end"] and record["end"] < now else None) or now
    status = "ended" if record["status"] == "running" and record["end"] and record["end"] < now else record["status"]
    metrics = [record["primary_metric"], *record["guardrails"]]
    alpha = record["alpha"] / max(1, len(names) - 1)  # Bonferroni over the comparisons with the control
    variants = []
    for n, name in enumerate(names):
        table = units[name]
        row: dict[str, Any] = {"name": name, "weight": weights[n], "units": counts[n], "units_needed": needed[name],
                               **{c: (round(float(table[c].sum()), 2) if len(table) else 0)
                                  for c in (COUNTS if at is not None else ("lists", "impressions"))}}
        if at is not None:
            row["metrics"] = {}
            for metric in metrics:
                values = table[metric].dropna() if len(table) else pd.Series(dtype=float)
                entry: dict[str, Any] = {"mean": round(float(values.mean()), 6) if len(values) else None}
                control = units[names[0]][metric].dropna() if len(units[names[0]]) else pd.Series(dtype=float)
                if n > 0 and len(values) >= 2 and len(control) >= 2:
                    entry.update(compare(control, values, alpha=alpha).as_dict())
                    entry["significant"] = entry["p_value"] < alpha
                row["metrics"][metric] = entry
        variants.append(row)
    report = {"experiment": record["name"], "status": status, "primary_metric": record["primary_metric"],
              "guardrails": record["guardrails"], "placements": record["placements"],
              "days": round(max(0.0, (ended - began) / DAY), 2),
              "horizon": {"reached": at is not None, "at": at, "min_days": record["min_days"], "units": needed},
              "alpha": record["alpha"], "alpha_per_comparison": round(alpha, 6),
              "interval_level": round(1 - alpha, 6),
              "srm": {"p_value": round(srm_p, 6), "broken": srm_p < SRM_ALPHA}, "variants": variants}
    report["verdict"] = _verdict(report)
    return report


def _verdict(report: dict[str, Any]) -> str:
    if report["srm"]["broken"]:
        return ("sample ratio mismatch: the units per variant do not match the weights (p < 0.001); the split is "
                "broken (a bug, bots, or a redirect on one side) and no result can be trusted")
    if not report["horizon"]["reached"]:
        short = [f"{v['name']} {v['units']}/{v['units_needed']}" for v in report["variants"] if v["units"] < v["units_needed"]]
        return ("collecting: outcomes and results are shown at the horizon fixed when the experiment was made ("
                + (f"units so far: {', '.join(short)}; " if short else "")
                + f"day {report['days']:.1f} of at least {report['horizon']['min_days']})")
    primary = report["primary_metric"]
    better, worse, harmed = [], [], []
    def direction(entry: dict[str, Any]) -> float:  # from the means: a lift is undefined over a control of 0
        return (entry["mean"] or 0.0) - (entry.get("control_mean") or 0.0)

    for variant in report["variants"][1:]:
        result = variant["metrics"][primary]
        breaches = [m for m in report["guardrails"] if variant["metrics"][m].get("significant")
                    and direction(variant["metrics"][m]) < 0]
        if result.get("significant") and direction(result) > 0:
            (harmed if breaches else better).append((direction(result), variant["name"], breaches))
        elif result.get("significant"):
            worse.append(variant["name"])
    if better:
        _, name, _ = max(better)
        lift = next(v for v in report["variants"] if v["name"] == name)["metrics"][primary]["lift"]
        return f"winner: {name} ({primary} " + (f"{lift:+.1%} over control)" if lift is not None else "up from 0)")
    if harmed:
        _, name, breaches = max(harmed)
        return f"{name} raises {primary} but harms {', '.join(breaches)}: no winner"
    if worse:
        return f"control is better than {', '.join(worse)} on {primary}"
    return f"no significant difference in {primary}"


def baselines(lists: pd.DataFrame, now: float | None = None) -> list[dict[str, Any]]:
    """Per placement and metric, the per-unit mean and standard deviation over the last 28 days of
    lists served outside experiments, and units per day: what sizes a new experiment."""
    now = time.time() if now is None else now
    if lists.empty:
        return []
    recent = lists[(lists["ts"] >= now - BASELINE_DAYS * DAY) & lists["experiments"].map(lambda e: not e)]
    recent = recent[recent["unit_id"].notna()].assign(unit=lambda d: d["unit_id"])
    out = []
    for endpoint, group in recent.groupby("endpoint"):
        units = unit_metrics(group)
        span = max(1.0, (group["ts"].max() - group["ts"].min()) / DAY)
        for metric in ("ctr", "conversion_rate", "revenue_per_user"):
            values = units[metric].dropna()
            if len(values) >= 2 and values.std(ddof=1) > 0:
                out.append({"placement": endpoint, "metric": metric, "mean": float(values.mean()),
                            "sd": float(values.std(ddof=1)), "units": len(values),
                            "units_per_day": round(len(values) / span, 2)})
    return out
