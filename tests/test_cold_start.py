"""Cold start on the demo content tenant: a user's profile beats popularity."""

import numpy as np
import pandas as pd
import pytest

from lodestar import demo
from lodestar.embed import Embedder
from lodestar.evaluation import evaluate, train_popularity
from lodestar.features import item_text
from lodestar.index.memory import MemoryIndexReader
from lodestar.recommend import COLD_START, POPULAR, profile_text, recommend
from lodestar.tenant_config import effective_config

pytestmark = pytest.mark.model  # the real all-MiniLM-L6-v2 (the fast tier: pytest -m "not model")


def test_profile_beats_popularity_for_new_users_on_demo_news(tmp_path):
    data = demo.news(n_items=300, n_users=150)
    items = data["items"]
    ids = [i["id"] for i in items]
    texts = [item_text(i["title"], i["description"], i["categories"], i["tags"], i["attributes"]) for i in items]
    vectors, _ = Embedder(cache_dir=tmp_path).embed(texts)
    events = pd.DataFrame(data["events"])
    positive = events[events["type"].isin(["view", "like"])]
    reader = MemoryIndexReader("news", ids, vectors, [{"popularity": float(p)} for p in train_popularity(positive, ids)])
    config = effective_config(None)
    # Each user as if brand new: what would they be shown, and did they go on to read it?
    relevant = {u: list(g["item_id"]) for u, g in positive.groupby("user_id")}
    attributes = {u["id"]: u["attributes"] for u in data["users"]}
    profiles = {u: Embedder(cache_dir=tmp_path).encode([profile_text(attributes[u], None, config)])[0] for u in relevant}

    def cold(user: str) -> list[str]:
        result = recommend(reader, [], 20, config, None, profiles[user])
        assert result.strategy == COLD_START
        return [h.item_id for h in result.items]

    def popular(user: str) -> list[str]:
        result = recommend(reader, [], 20, config)
        assert result.strategy == POPULAR
        return [h.item_id for h in result.items]

    cold_metrics = evaluate(relevant, cold, len(ids))
    popular_metrics = evaluate(relevant, popular, len(ids))
    assert cold_metrics.ndcg10 > 1.5 * popular_metrics.ndcg10, (cold_metrics, popular_metrics)
    assert np.isfinite(cold_metrics.recall20)
