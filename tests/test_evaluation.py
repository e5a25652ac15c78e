"""The temporal holdout and the metrics."""

import math

import pandas as pd
import pytest

from lodestar.evaluation import evaluate, ndcg_at, recall_at, temporal_split


def test_last_twenty_percent_ceil_per_user_is_held_out():
    events = pd.DataFrame({
        "user_id": ["u"] * 6 + ["v"] * 2,
        "item_id": ["a", "b", "c", "d", "e", "f", "x", "y"],
        "ts": [6, 5, 4, 3, 2, 2, 1, 2],
    })
    split = temporal_split(events, 0.2)
    # u: 6 events -> ceil(1.2) = 2 held out: the latest "a" (ts 6) and "b" (ts 5)
    assert split.test == {"u": ["b", "a"], "v": ["y"]}
    assert sorted(split.train["item_id"]) == ["c", "d", "e", "f", "x"]


def test_metrics_by_hand():
    assert ndcg_at(["x", "a"], {"a"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(["a", "b"], {"a", "b"}, 10) == pytest.approx(1.0)
    assert recall_at(["a", "x"], {"a", "b"}, 20) == 0.5
    assert recall_at(["a"] + ["x"] * 19, {f"i{n}" for n in range(30)} | {"a"}, 20) == pytest.approx(1 / 20)
    metrics = evaluate({"u": ["a"], "v": ["b"]}, lambda user: ["a", "b"], catalog_size=4)
    assert metrics.ndcg10 == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert metrics.recall20 == 1.0 and metrics.coverage == 0.5 and metrics.users == 2


def test_tenant_evaluation_samples_users_beyond_the_cap():
    import numpy as np

    from lodestar.evaluation import evaluate_tenant
    from lodestar.tenant_config import effective_config

    rng = np.random.default_rng(1)
    items = [f"i{n}" for n in range(30)]
    rows = [(f"u{u}", items[int(rng.integers(30))], float(t)) for u in range(60) for t in range(8)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(type="view", value=None)
    content = rng.normal(size=(30, 4)).astype("float32")
    config = effective_config({"evaluation": {"max_users": 25, "min_test_users": 5}})
    result = evaluate_tenant(events, items, content, config)
    assert result["status"] == "evaluated" and result["test_users"] == 25 and result["all_test_users"] == 60
    assert 0 <= result["lodestar"]["ndcg@10"] <= 1
