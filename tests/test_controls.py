"""The filter language, rules and diversity, without HTTP."""

import numpy as np
import pytest

from lodestar.controls import Controls, apply, mmr, parse_diversity, parse_rules
from lodestar.errors import InvalidInput
from lodestar.filters import parse_exclude, parse_filter
from lodestar.index import Hit
from lodestar.index.memory import MemoryIndexReader

ITEM = {"categories": ["shoes"], "tags": ["sale"], "attributes": {"price": 30.0, "brand": "acme", "size": 42}}


@pytest.mark.parametrize("spec, expected", [
    ({"categories": ["shoes", "hats"]}, True),
    ({"categories": ["hats"]}, False),
    ({"tags": ["sale"], "categories": ["shoes"]}, True),
    ({"attributes": {"price": {"gte": 10, "lte": 50}}}, True),
    ({"attributes": {"price": {"gt": 30}}}, False),
    ({"attributes": {"brand": {"in": ["acme", "zeta"]}}}, True),
    ({"attributes": {"brand": "zeta"}}, False),
    ({"attributes": {"size": {"eq": 42}}}, True),
    ({"attributes": {"missing": {"gte": 0}}}, False),
    ({"available": True}, True),
    ({"available": False}, False),
])
def test_filter_semantics(spec, expected):
    assert parse_filter(spec).matches(ITEM) is expected
    assert parse_filter(__import__("json").dumps(spec)).matches(ITEM) is expected  # the GET form


@pytest.mark.parametrize("spec, field", [
    ({"categories": "shoes", "colour": 1}, "filter: unknown field 'colour'"),
    ({"categories": [1]}, "filter.categories: must be a list of strings"),
    ({"attributes": {"price": {"gte": "ten"}}}, "filter.attributes.price.gte: must be a number"),
    ({"attributes": {"price": {"between": [1, 2]}}}, "filter.attributes.price: use gte"),
    ({"attributes": {"brand": {"in": []}}}, "filter.attributes.brand.in: must be a non-empty list"),
    ({"attributes": {"flag": True}}, "filter.attributes.flag: must be a string or a number"),
    ({"available": "yes"}, "filter.available: must be true or false"),
    ("{oops", "filter: not valid JSON"),
    ([1], "filter: must be a JSON object"),
])
def test_invalid_filters_name_the_field(spec, field):
    with pytest.raises(InvalidInput, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_filter(spec)


def test_exclude_and_diversity_parsing():
    assert parse_exclude("a, b,,c") == ("a", "b", "c") and parse_exclude(["x"]) == ("x",)
    with pytest.raises(InvalidInput, match="exclude"):
        parse_exclude([1])
    assert parse_diversity("0.3") == 0.3
    with pytest.raises(InvalidInput, match="diversity"):
        parse_diversity(2)


def test_rules_validation():
    rules = parse_rules([{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.5, "start": "2020-01-01T00:00:00Z"},
                         {"type": "pin", "item_id": "x", "position": 2}])
    assert rules[0].active(1.7e9) and not rules[0].active(1.5e9)
    for bad, message in (([{"type": "shove"}], r"rules\[0\].type"),
                         ([{"type": "pin", "item_id": "x", "position": 0}], r"rules\[0\].position"),
                         ([{"type": "bury", "amount": 1}], r"rules\[0\].filter"),
                         ([{"type": "boost", "filter": {"tags": 5}}], r"rules\[0\].filter.tags")):
        with pytest.raises(InvalidInput, match=message):
            parse_rules(bad)


def _reader():
    ids = ["a1", "a2", "a3", "b1", "b2"]
    content = np.asarray([[1, 0], [0.99, 0.14], [0.98, 0.2], [0, 1], [0.1, 0.99]], dtype=np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    payloads = [{"categories": [i[0]], "popularity": 0.5, "title": i} for i in ids]
    return MemoryIndexReader("t", ids, content, payloads)


def test_mmr_trades_relevance_for_variety():
    reader = _reader()
    hits = reader.nearest(np.asarray([1.0, 0.05]), 5)
    assert [h.item_id for h in mmr(hits, reader.vectors([h.item_id for h in hits]), 2, 0.0)] == ["a1", "a2"]
    diverse = mmr(hits, reader.vectors([h.item_id for h in hits]), 2, 0.7)
    assert diverse[0].item_id == "a1" and diverse[1].item_id.startswith("b")


def test_boost_bury_and_pin():
    reader = _reader()
    hits = [Hit(i, s, {"categories": [i[0]]}) for i, s in (("a1", 0.9), ("a2", 0.8), ("b1", 0.5), ("b2", 0.4))]
    boosted = apply(reader, hits, 4, Controls(), parse_rules([{"type": "boost", "filter": {"categories": ["b"]}, "amount": 1}]))
    assert [h.item_id for h in boosted][:2] == ["b1", "b2"]
    buried = apply(reader, hits, 4, Controls(), parse_rules([{"type": "bury", "filter": {"categories": ["a"]}, "amount": 1}]))
    assert [h.item_id for h in buried][-2:] == ["a1", "a2"]
    pinned = apply(reader, hits, 3, Controls(), parse_rules([{"type": "pin", "item_id": "a3", "position": 2}]))
    assert [h.item_id for h in pinned] == ["a1", "a3", "a2"]
    excluded = apply(reader, hits, 3, Controls(exclude=("a3",)), parse_rules([{"type": "pin", "item_id": "a3", "position": 1}]))
    assert "a3" not in [h.item_id for h in excluded]
    expired = parse_rules([{"type": "pin", "item_id": "a3", "position": 1, "end": "2001-01-01T00:00:00Z"}])
    assert "a3" not in [h.item_id for h in apply(reader, hits, 3, Controls(), expired)]


def test_a_trace_notes_each_rule_and_the_ranks_before_and_after():
    from lodestar.explain import Trace

    reader = _reader()
    hits = [Hit(i, s, {"categories": [i[0]]}) for i, s in (("a1", 0.9), ("a2", 0.8), ("b1", 0.5), ("b2", 0.4))]
    rules = parse_rules([{"type": "bury", "filter": {"categories": ["a"]}, "amount": 0.25},
                         {"type": "boost", "filter": {"categories": ["b"]}, "amount": 1},
                         {"type": "pin", "item_id": "a3", "position": 2}])
    trace = Trace()
    out = apply(reader, hits, 3, Controls(), rules, trace=trace)
    untraced = apply(reader, hits, 3, Controls(), rules)
    assert [h.item_id for h in out] == [h.item_id for h in untraced] == ["b1", "a3", "b2"]
    b1, a3, b2 = (trace.explanation(i) for i in ("b1", "a3", "b2"))
    assert b1["rules"] == [{"rule": "rules[1]", "type": "boost", "score_change": 0.5}]  # 1.0 x the range 0.5
    assert (b1["rank_before_rules"], b1["rank_after_rules"], b1["rank"]) == (3, 1, 1)
    assert b1["score_before_rules"] == 0.5
    assert (b2["rank_before_rules"], b2["rank_after_rules"], b2["rank"]) == (4, 2, 3)
    assert a3["sources"] == ["pinned"] and a3["rules"] == [{"rule": "rules[2]", "type": "pin", "position": 2}]
    assert (a3["rank_before_rules"], a3["rank"]) == (None, 2)  # not a candidate: the pin brought it
    a1 = trace.explanation("a1")
    assert a1["rules"] == [{"rule": "rules[0]", "type": "bury", "score_change": -0.125}]
    assert (a1["rank_before_rules"], a1["rank_after_rules"]) == (1, 3)


def test_explained_recommendations_say_where_each_item_came_from():
    import pandas as pd

    from lodestar import collab
    from lodestar.explain import Trace
    from lodestar.recommend import recommend, user_taste
    from lodestar.tenant_config import TenantConfig

    config = TenantConfig()
    ids = ["a1", "a2", "a3", "b1", "b2"]
    rows = [(f"u{u}", item, "purchase", None, 1_700_000_000 + n) for u in range(6)
            for n, item in enumerate(["a1", "a2", "a3"] if u % 2 else ["b1", "b2", "a1"])]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "type", "value", "ts"])
    model = collab.fit(collab.positive_interactions(events, config.event_weights), ids, config)
    base = _reader()
    reader = MemoryIndexReader("t", ids, np.stack([base.get(i).vector for i in ids]),
                               [base.get(i).payload for i in ids], model.factors_for(ids))
    history = [{"item_id": "a1", "type": "purchase", "ts": 1_700_000_100}]
    for model_used, strategy, sources in ((model, "hybrid", {"collab", "content"}), (None, "content_profile", {"content"})):
        trace = Trace()
        explained = recommend(reader, history, 3, config, model_used, trace=trace, now=1_700_000_200)
        plain = recommend(reader, history, 3, config, model_used, now=1_700_000_200)
        assert explained.strategy == plain.strategy == strategy
        assert [h.item_id for h in explained.items] == [h.item_id for h in plain.items]  # explaining changes nothing
        taste = user_taste(reader, history, config)
        for rank, hit in enumerate(explained.items, 1):
            why = trace.explanation(hit.item_id)
            assert why["rank"] == rank and why["sources"] and set(why["sources"]) <= sources, why
            assert why["content_similarity"] is not None and why["popularity"] == 0.5
            # the similarity noted is this item's own (not a neighbour's in the ranking arrays)
            assert abs(why["content_similarity"] - float(reader.get(hit.item_id).vector @ taste)) < 1e-5, why
            assert (why["collab_score"] is not None) == (strategy == "hybrid"), why
            assert why["rules"] == [] and why["rank_before_rules"] == why["rank_after_rules"] == rank
    trace = Trace()
    nobody = recommend(reader, [], 2, config, model, trace=trace, now=1_700_000_200)
    assert nobody.strategy == "popular"
    assert all(trace.explanation(h.item_id)["sources"] == ["popular"] for h in nobody.items)
    trace = Trace()
    liked = recommend(reader, history, 3, config, None, preferences={"liked_categories": ["b"]}, trace=trace,
                      now=1_700_000_200)
    boosted = [trace.explanation(h.item_id) for h in liked.items if h.item_id.startswith("b")]
    assert boosted and all(w["rules"][0]["rule"] == "preferences.liked_categories" for w in boosted)
