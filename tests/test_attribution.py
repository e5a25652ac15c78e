import pandas as pd

from lodestar.attribution import attribute, by_strategy

DAY1, DAY2 = 1_700_000_000.0, 1_700_090_000.0


def test_clicks_and_conversions_are_attributed_to_the_list_that_showed_the_item():
    served = [
        {"recommendation_id": "r1", "strategy": "hybrid", "items": ["a", "b"], "ts": DAY1},
        {"recommendation_id": "r2", "strategy": "popular", "items": ["a", "c", "d"], "ts": DAY1},
        {"recommendation_id": "r3", "strategy": "hybrid", "items": ["e"], "ts": DAY2},
    ]
    events = pd.DataFrame([
        {"recommendation_id": "r1", "item_id": "a", "type": "click"},
        {"recommendation_id": "r1", "item_id": "a", "type": "purchase"},
        {"recommendation_id": "r1", "item_id": "z", "type": "click"},  # not in the list: not attributed
        {"recommendation_id": "r2", "item_id": "c", "type": "click"},
        {"recommendation_id": None, "item_id": "d", "type": "click"},  # no recommendation_id
        {"recommendation_id": "unknown", "item_id": "e", "type": "click"},
    ])
    table = attribute(served, events)
    rows = {(r.day, r.strategy): r for r in table.itertuples()}
    first = rows[("2023-11-14", "hybrid")]
    assert (first.lists, first.impressions, first.clicks, first.conversions, first.ctr) == (1, 2, 1, 1, 0.5)
    assert rows[("2023-11-14", "popular")].ctr == 1 / 3
    assert rows[("2023-11-15", "hybrid")].clicks == 0
    totals = by_strategy(table).set_index("strategy")
    assert totals.loc["hybrid", "impressions"] == 3 and totals.loc["hybrid", "ctr"] == 1 / 3


def test_nothing_served_gives_an_empty_table():
    assert attribute([], pd.DataFrame()).empty
