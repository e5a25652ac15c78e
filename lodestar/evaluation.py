"""Offline evaluation: a per-user temporal holdout and ranking metrics.

Protocol: every interaction counts once (implicit); for each user the last ``ceil(test_fraction *
n)`` interactions by timestamp are the test set and the rest is training; items seen in training are
excluded from the ranking; metrics are averaged over users with a test set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lodestar import collab
from lodestar.index.memory import MemoryIndexReader
from lodestar.recommend import recommend

if TYPE_CHECKING:
    from lodestar.tenant_config import TenantConfig


@dataclass
class Split:
    train: pd.DataFrame  # columns user_id, item_id, ts (and whatever else the events carry)
    test: dict[str, list[str]]  # user -> held-out items, oldest first


def temporal_split(events: pd.DataFrame, test_fraction: float = 0.2) -> Split:
    """Hold out each user's last ``ceil(test_fraction * n)`` interactions (stable on equal ``ts``)."""
    ordered = events.reset_index(drop=True).reset_index(names="_order").sort_values(["user_id", "ts", "_order"], kind="stable")
    sizes = ordered.groupby("user_id", sort=False)["item_id"].transform("size").to_numpy()
    rank = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_test = np.ceil(sizes * test_fraction).astype(int)
    is_test = rank >= sizes - n_test
    train = ordered[~is_test].drop(columns="_order")
    test_rows = ordered[is_test]
    test = {u: list(g["item_id"]) for u, g in test_rows.groupby("user_id", sort=False)}
    return Split(train=train, test=test)


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: list[str], relevant: set[str], k: int) -> float:
    # Divided by min(k, relevant): a perfect list scores 1 even when more than k items are relevant.
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant)) if relevant else 0.0


@dataclass
class Metrics:
    ndcg10: float
    recall20: float
    coverage: float
    users: int

    def as_dict(self) -> dict[str, float]:
        return {"ndcg@10": self.ndcg10, "recall@20": self.recall20, "coverage@20": self.coverage, "users": self.users}


def evaluate(
    test: dict[str, list[str]], recommend: Callable[[str], list[str]], catalog_size: int,
    users: Iterable[str] | None = None,
) -> Metrics:
    """Average NDCG@10 and Recall@20 over test users; catalog coverage of the top-20 lists."""
    ndcg, recall, shown = [], [], set()
    for user in users if users is not None else test:
        relevant = set(test[user])
        ranked = recommend(user)
        ndcg.append(ndcg_at(ranked, relevant, 10))
        recall.append(recall_at(ranked, relevant, 20))
        shown.update(ranked[:20])
    return Metrics(
        ndcg10=float(np.mean(ndcg)) if ndcg else 0.0,
        recall20=float(np.mean(recall)) if recall else 0.0,
        coverage=len(shown) / catalog_size if catalog_size else 0.0,
        users=len(ndcg),
    )


def train_popularity(train: pd.DataFrame, item_ids: list[str]) -> np.ndarray:
    """Share of training interactions per item, scaled to [0, 1] (no test data leaks in)."""
    counts = train["item_id"].value_counts()
    pop = np.asarray([counts.get(i, 0) for i in item_ids], dtype=np.float32)
    return pop / pop.max() if len(pop) and pop.max() > 0 else pop


def evaluate_tenant(
    events: pd.DataFrame, item_ids: list[str], content: np.ndarray, config: TenantConfig,
    tenant: str = "evaluation",
) -> dict[str, Any]:
    """The served ranking (``lodestar.recommend``) against the popularity baseline on the temporal
    holdout of a tenant's events, with a model fitted on the training part only."""
    settings = config.evaluation
    known = set(item_ids)
    events = events[events["item_id"].isin(known)]
    split = temporal_split(events, settings.test_fraction)
    if len(split.test) < settings.min_test_users:
        return {"status": "insufficient_data", "test_users": len(split.test)}
    model = collab.fit(collab.positive_interactions(split.train, config.event_weights), item_ids, config)
    popularity = train_popularity(split.train, item_ids)
    reader = MemoryIndexReader(tenant, item_ids, content, [{"popularity": float(p)} for p in popularity],
                               model.factors_for(item_ids))
    users = sorted(split.test)
    limit = settings.max_users
    if len(users) > limit:
        users = sorted(np.random.default_rng(0).choice(users, size=limit, replace=False).tolist())
    # The training events of the users evaluated, as the API reads them: one list of records per
    # user, made in one pass (a DataFrame per user costs seconds at a million events).
    columns = [c for c in ("user_id", "item_id", "type", "value", "ts") if c in split.train]
    train = split.train[split.train["user_id"].isin(set(users))][columns]
    history: dict[str, list[dict[str, Any]]] = {}
    for user, record in zip(train["user_id"].tolist(), train.to_dict("records"), strict=True):
        history.setdefault(user, []).append(record)
    strategies: dict[str, int] = {}

    def served(user: str) -> list[str]:
        result = recommend(reader, history.get(user, []), 20, config, model)
        strategies[result.strategy] = strategies.get(result.strategy, 0) + 1
        return [h.item_id for h in result.items]

    def popular(user: str) -> list[str]:
        seen = {e["item_id"] for e in history.get(user, [])}
        return [h.item_id for h in reader.popular(20, exclude=seen)]

    lodestar_metrics = evaluate(split.test, served, len(item_ids), users)
    popular_metrics = evaluate(split.test, popular, len(item_ids), users)
    return {
        "status": "evaluated",
        "test_users": len(users),
        "all_test_users": len(split.test),
        "model": model.kind,
        "lodestar": lodestar_metrics.as_dict(),
        "popular": popular_metrics.as_dict(),
        "strategies": strategies,
    }
