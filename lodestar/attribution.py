"""Attribution: which served lists led to clicks and conversions, by strategy and by day.

A served list (logged by the API under its ``recommendation_id``) counts each of its items as an
impression. An event that carries a ``recommendation_id`` of a served list, for an item of that
list, is attributed to the list: clicks are ``click`` events, conversions ``add_to_cart`` and
``purchase``. CTR is clicks over impressions.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

COLUMNS = ["day", "strategy", "lists", "impressions", "clicks", "conversions", "ctr"]
CONVERSIONS = ("add_to_cart", "purchase")


def attribute(served: list[dict[str, Any]], events: pd.DataFrame) -> pd.DataFrame:
    if not served:
        return pd.DataFrame(columns=COLUMNS)
    lists = pd.DataFrame(served)
    lists["day"] = pd.to_datetime(lists["ts"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    lists["impressions"] = lists["items"].map(len)
    shown = lists[["recommendation_id", "items"]].explode("items").rename(columns={"items": "item_id"})
    attributed = pd.DataFrame(columns=["recommendation_id", "item_id", "type"])
    if not events.empty and "recommendation_id" in events:
        tagged = events[events["recommendation_id"].notna()][["recommendation_id", "item_id", "type"]]
        attributed = tagged.merge(shown, on=["recommendation_id", "item_id"], how="inner")
    per_list = attributed.assign(
        clicks=(attributed["type"] == "click").astype(int),
        conversions=attributed["type"].isin(CONVERSIONS).astype(int),
    ).groupby("recommendation_id")[["clicks", "conversions"]].sum()
    lists = lists.merge(per_list, how="left", left_on="recommendation_id", right_index=True).fillna(
        {"clicks": 0, "conversions": 0})
    out = lists.groupby(["day", "strategy"]).agg(
        lists=("recommendation_id", "size"), impressions=("impressions", "sum"),
        clicks=("clicks", "sum"), conversions=("conversions", "sum"),
    ).reset_index()
    out[["clicks", "conversions"]] = out[["clicks", "conversions"]].astype("int64")
    out["ctr"] = (out["clicks"] / out["impressions"].where(out["impressions"] > 0)).fillna(0.0)
    return out[COLUMNS]


def by_strategy(table: pd.DataFrame) -> pd.DataFrame:
    totals = table.groupby("strategy")[["lists", "impressions", "clicks", "conversions"]].sum().reset_index()
    totals["ctr"] = (totals["clicks"] / totals["impressions"].where(totals["impressions"] > 0)).fillna(0.0)
    return totals


def activity(events: pd.DataFrame, days: int = 60) -> list[dict[str, Any]]:
    """Events per UTC day (by the time they happened) and type, over the ``days`` up to the newest
    event: ``[{"day": "2026-11-01", "view": 120, "purchase": 4, ...}]``, oldest first."""
    if events.empty:
        return []
    day = pd.to_datetime(events["ts"], unit="s", utc=True).dt.floor("D")
    recent = events.assign(day=day)[day >= day.max() - pd.Timedelta(days=days - 1)]
    table = recent.groupby(["day", "type"]).size().unstack(fill_value=0)
    return [{"day": d.strftime("%Y-%m-%d"), **{t: int(n) for t, n in row.items() if n}}
            for d, row in table.iterrows()]


def as_rows(table: pd.DataFrame) -> list[dict[str, Any]]:
    """An attribution table as JSON rows (what the CDP's reports keep for the console)."""
    return [{**r, "ctr": float(r["ctr"])} for r in table.astype({"lists": int, "impressions": int, "clicks": int,
                                                                 "conversions": int}).to_dict("records")]
