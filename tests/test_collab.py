"""The collaborative model and the hybrid ranking, on small hand-made data."""

import numpy as np
import pandas as pd
import pytest

from lodestar import collab
from lodestar.index.memory import MemoryIndexReader
from lodestar.recommend import COLD_START, HYBRID, POPULAR, recommend
from lodestar.tenant_config import effective_config

ITEMS = ["a", "b", "c", "d", "e", "f"]


def _pairs(baskets: dict[str, list[str]]) -> pd.DataFrame:
    return pd.DataFrame([(u, i) for u, items in baskets.items() for i in items], columns=["user_id", "item_id"])


BASKETS = {f"u{n}": ["a", "b"] for n in range(6)} | {f"v{n}": ["d", "e"] for n in range(6)} | {"w": ["a", "b", "c"]}


@pytest.mark.parametrize("max_dense", [100, 3])
def test_co_consumed_item_ranks_first_in_both_model_kinds(max_dense):
    config = effective_config({"collab": {"ease_max_items": max_dense, "factors": 2}})
    model = collab.fit(_pairs(BASKETS), ITEMS, config)
    assert model.kind == ("ease" if max_dense == 100 else "svd")
    scores = model.scores({"a": 1.0}, ["b", "c", "d", "e", "f"])
    assert int(np.argmax(scores)) == 0  # b goes with a
    assert scores[0] > scores[2] and scores[0] > scores[3]


def test_model_round_trips_through_disk(tmp_path):
    model = collab.fit(_pairs(BASKETS), ITEMS, effective_config(None))
    model.save(tmp_path / "m")
    loaded = collab.CollabModel.load(tmp_path / "m")
    # "f" has no interactions: the model does not cover it, and it scores 0.
    assert loaded.kind == model.kind and loaded.item_ids == ITEMS[:5]
    assert loaded.scores({"a": 1.0}, ["f"])[0] == 0.0
    assert np.allclose(loaded.scores({"a": 1.0}, ITEMS), model.scores({"a": 1.0}, ITEMS))


def test_event_weights_follow_type_recency_and_dislikes():
    config = effective_config(None)
    events = [
        {"item_id": "a", "type": "view", "ts": 1.0},
        {"item_id": "b", "type": "view", "ts": 2.0},
        {"item_id": "c", "type": "purchase", "ts": 3.0},
        {"item_id": "d", "type": "dislike", "ts": 4.0},
        {"item_id": "e", "type": "impression", "ts": 5.0},
    ]
    weights = collab.event_item_weights(events, config)
    assert weights["d"] < 0 and "e" not in weights
    assert weights["c"] > weights["b"] > weights["a"]  # purchase > view; later view > earlier view


def test_positive_interactions_net_out_dislikes():
    events = pd.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["a", "a", "b"],
                           "type": ["view", "dislike", "like"], "value": [None, None, None], "ts": [1, 2, 3]})
    pairs = collab.positive_interactions(events, effective_config(None).event_weights)
    assert pairs.values.tolist() == [["u", "b"]]


def _reader(model):
    rng = np.random.default_rng(0)
    content = rng.normal(size=(len(ITEMS), 8)).astype(np.float32)
    content[5] = content[2]  # "f" is new (no interactions) but reads exactly like "c"
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    payloads = [{"popularity": p} for p in (1.0, 0.9, 0.2, 0.8, 0.7, 0.0)]
    return MemoryIndexReader("t", ITEMS, content, payloads, model.factors)


def test_hybrid_ranking_and_new_items():
    config = effective_config(None)
    model = collab.fit(_pairs(BASKETS), ITEMS, config)
    reader = _reader(model)
    result = recommend(reader, [{"item_id": "a", "type": "view", "ts": 1.0}], 2, config, model)
    assert result.strategy == HYBRID and result.items[0].item_id == "b"
    # A user whose taste is "c" is offered "f", which nobody has touched yet: content brings it in.
    taste_c = [{"item_id": "c", "type": "purchase", "ts": 1.0}]
    result = recommend(reader, taste_c, 5, config, model)
    assert "f" in [h.item_id for h in result.items]


def test_cold_start_and_popular_fallbacks():
    config = effective_config(None)
    model = collab.fit(_pairs(BASKETS), ITEMS, config)
    reader = _reader(model)
    profile = reader.vectors(["d"])["d"]
    result = recommend(reader, [], 2, config, model, profile_vector=profile)
    assert result.strategy == COLD_START and result.items[0].item_id == "d"
    result = recommend(reader, [], 2, config, model)
    assert result.strategy == POPULAR and [h.item_id for h in result.items] == ["a", "b"]


def test_ease_scores_read_the_fewer_rows_and_agree():
    """A heavy user's scores are read from the candidates' rows of B (rescaled by diag(P)); a light
    user's from their own rows. Both give w @ B[user items][:, candidates]."""
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(40)]
    baskets = {f"u{n}": list(rng.choice(items, size=8, replace=False)) for n in range(60)}
    model = collab.fit(_pairs(baskets), items, effective_config(None))
    assert model.kind == "ease" and model.ease_diag is not None
    weights = {i: float(rng.uniform(-0.5, 2.0)) for i in model.item_ids[:25]}  # 25 items of history
    # 5 candidates, fewer than the history, out of the model's order (their rows are read in order)
    candidates = [model.item_ids[n] for n in (29, 26, 28, 25, 27)] + ["unknown"]
    idx, w = model.user_profile(weights)
    expected = w @ np.asarray(model.ease)[idx][:, [model.index[c] for c in candidates[:-1]]]
    scores = model.scores(weights, candidates)
    assert np.allclose(scores[:-1], expected, rtol=1e-4, atol=1e-6) and scores[-1] == 0.0
    legacy = collab.CollabModel(model.kind, model.item_ids, model.factors, model.damping, model.ease, model.meta)
    assert np.allclose(legacy.scores(weights, candidates), scores, rtol=1e-4, atol=1e-6)  # saved before ease_diag
    light = dict(list(weights.items())[:3])  # 3 items of history: their own rows are read
    idx, w = model.user_profile(light)
    expected = w @ np.asarray(model.ease)[idx][:, [model.index[c] for c in candidates[:-1]]]
    assert np.allclose(model.scores(light, candidates)[:-1], expected, rtol=1e-4, atol=1e-6)
    assert np.allclose(collab.CollabModel.from_bytes(model.to_bytes()).ease_diag, model.ease_diag)


def test_a_heavy_users_kept_ease_scores_are_the_scores_and_only_new_candidates_are_computed(monkeypatch):
    """A heavy user's EASE scores kept between rankings (``memo``) are exactly what computing them
    again gives; a ranking that meets candidates scored before computes only the others."""
    rng = np.random.default_rng(5)
    items = [f"i{n}" for n in range(40)]
    baskets = {f"u{n}": list(rng.choice(items, size=8, replace=False)) for n in range(60)}
    model = collab.fit(_pairs(baskets), items, effective_config(None))
    weights = {i: float(rng.uniform(-0.5, 2.0)) for i in model.item_ids[:25]}  # heavier than 6 candidates
    first = [model.item_ids[n] for n in (29, 26, 28, 25, 27)] + ["unknown"]
    second = [model.item_ids[n] for n in (31, 26, 30, 29)]  # two scored before, two not
    kept: list[np.ndarray] = []

    def memo(n_items: int) -> np.ndarray:
        if not kept:
            kept.append(np.full(n_items, np.nan, dtype=np.float32))
        return kept[0]

    computed: list[int] = []
    heavy = model._heavy_scores
    monkeypatch.setattr(model, "_heavy_scores", lambda idx, w, cand: computed.append(len(cand)) or heavy(idx, w, cand))
    assert np.array_equal(model.scores(weights, first, memo=memo), model.scores(weights, first))
    assert np.array_equal(model.scores(weights, second, memo=memo), model.scores(weights, second))
    assert np.array_equal(model.scores(weights, first, memo=memo), model.scores(weights, first))
    assert computed == [5, 5, 2, 4, 5]  # with the memo: 5, then the 2 new ones, then none
    assert int((~np.isnan(kept[0])).sum()) == 7 and len(kept[0]) == len(model.item_ids)
    light = dict(list(weights.items())[:3])  # a light user's own rows are read: nothing kept
    kept.clear()
    assert np.array_equal(model.scores(light, first, memo=memo), model.scores(light, first)) and not kept


def test_a_users_profile_is_reused_only_for_the_same_weights():
    """user_profile keeps its last answer for the second call of a recommendation; weights that
    differ (another user, or the same dict changed since) are computed anew."""
    import numpy as np

    from lodestar.collab import CollabModel

    model = CollabModel(kind="svd", item_ids=["a", "b", "c"], factors=np.eye(3, dtype=np.float32),
                        damping=np.ones(3, dtype=np.float32))
    weights = {"a": 1.0, "b": 2.0}
    first = model.user_profile(weights)
    assert model.user_profile(weights) is first
    weights["c"] = 3.0  # the same dict, changed
    idx, w = model.user_profile(weights)
    assert sorted(idx.tolist()) == [0, 1, 2] and sorted(w.tolist()) == [1.0, 2.0, 3.0]
    assert model.user_profile({"b": 5.0})[0].tolist() == [1]


def test_a_users_profile_keeps_the_known_items_with_a_weight_in_order():
    """Items the model does not know and items whose events cancel out (weight 0) are left out;
    the rest keep the weights' order, their model index beside their weight."""
    model = collab.CollabModel(kind="svd", item_ids=["a", "b", "c", "d"], factors=np.eye(4, dtype=np.float32),
                               damping=np.ones(4, dtype=np.float32))
    idx, w = model.user_profile({"d": 0.5, "x": 9.0, "b": 0.0, "a": -1.25, "c": 2.0})
    assert idx.tolist() == [3, 0, 2] and w.tolist() == [0.5, -1.25, 2.0]
    assert idx.dtype == np.int64 and w.dtype == np.float32
    none_idx, none_w = model.user_profile({"x": 1.0, "b": 0.0})
    assert len(none_idx) == 0 and len(none_w) == 0 and model.query_vector({"x": 1.0, "b": 0.0}) is None


def test_a_taste_is_the_recency_weighted_mean_of_the_recent_items_vectors():
    """Each recent event weighs its type's weight halved per half-life of age (days, from the
    newest); a dislike pulls away; events of items without a vector count for nothing; no positive
    weight at all means no taste."""
    from lodestar.event_weights import event_weight
    from lodestar.features import DAY
    from lodestar.recommend import taste_vector

    config = effective_config({"recency_half_life_days": 10.0})
    vectors = {"a": np.array([1, 0, 0], np.float32), "b": np.array([0, 1, 0], np.float32),
               "c": np.array([0, 0, 1], np.float32)}
    now = 1_000.0 * DAY
    events = [{"item_id": "a", "type": "view", "ts": now}, {"item_id": "b", "type": "view", "ts": now - 10 * DAY},
              {"item_id": "c", "type": "dislike", "ts": now - 20 * DAY}, {"item_id": "z", "type": "view", "ts": now}]
    view, dislike = (event_weight(kind, None, config.event_weights) for kind in ("view", "dislike"))
    expected = np.array([view, view * 0.5, dislike * 0.25])
    assert np.allclose(taste_vector(events, vectors, config), expected / np.linalg.norm(expected), atol=1e-6)
    assert taste_vector(events[2:3], vectors, config) is None  # a dislike alone
    assert taste_vector(events[3:], vectors, config) is None  # no vector for z


def test_aged_item_weights_equal_the_whole_history_weighed_again():
    """Newer events added to a history's weights and sums give what weighing the whole history
    gives: ratings, dislikes, events that do not weigh (impressions) and items seen before."""
    config = effective_config(None)
    rng = np.random.default_rng(11)
    kinds = ["view", "purchase", "dislike", "impression", "rating", "like"]
    for trial in range(20):
        events = [{"item_id": f"i{rng.integers(15)}", "type": str(rng.choice(kinds)), "value": float(rng.integers(1, 6)),
                   "ts": float(t)} for t in rng.permutation(60)]
        cut = int(rng.integers(1, 59))
        older = [e for e in events if e["ts"] < cut]
        newer = [e for e in events if e["ts"] >= cut]
        weights, sums, _ = collab.item_weights_and_sums(older, config)
        aged, aged_sums = collab.aged_item_weights(weights, sums, newer, config)
        whole, whole_sums, weighed = collab.item_weights_and_sums(events, config)
        assert list(aged) == list(whole) and list(aged_sums) == list(whole_sums), trial  # the same order too
        assert np.allclose([aged[i] for i in whole], [whole[i] for i in whole], rtol=1e-12, atol=1e-12), trial
        assert np.allclose([aged_sums[i] for i in whole], [whole_sums[i] for i in whole], rtol=1e-12), trial
        assert weighed == sum(1 for e in events if e["type"] != "impression")
