"""The configuration form of the console, without a server: what it stores and which field an
error names."""

import pytest

from lodestar.config_versions import proposed_config
from lodestar.errors import InvalidInput
from serving.console.admin import _field_of, config_from_form, form_rows


def test_values_equal_to_the_defaults_follow_the_defaults_and_other_keys_are_kept():
    stored = {"recency_half_life_days": 7, "quotas": {"items": 10}, "ranking": {"content": 0.5}}
    form = {"event_weights.view": "1.0", "event_weights.purchase": "10", "ranking.content": "0.1",
            "ranking.collab": "1", "rules.0.type": "boost", "rules.0.filter": '{"tags": ["sale"]}',
            "rules.0.amount": "0.3", "rules.1.type": "pin", "rules.1.item_id": "p1", "rules.1.position": "2",
            "rules.1.remove": "1", "rules.2.type": "", "rules.2.item_id": "ignored: no type"}
    described = config_from_form(stored, form)
    assert described.pop("_rows") == [0]
    # Quotas are the operator's: left out of the change (the store keeps them as they are).
    assert described == {"recency_half_life_days": 7, "event_weights": {"purchase": 10.0},
                         "rules": [{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.3}]}


def test_errors_name_the_form_field_of_the_row_they_came_from():
    with pytest.raises(InvalidInput) as bad_number:
        config_from_form({}, {"ranking.collab": "lots"})
    assert bad_number.value.field == "ranking.collab"
    with pytest.raises(InvalidInput) as bad_json:
        config_from_form({}, {"rules.3.type": "boost", "rules.3.filter": "{tags"})
    assert bad_json.value.field == "rules.3.filter"
    # Row 0 removed, so the validated list's rules[0] is form row 1.
    described = config_from_form({}, {"rules.0.type": "bury", "rules.0.remove": "1", "rules.1.type": "pin",
                                      "rules.1.item_id": "p1", "rules.1.position": "500"})
    rows = described.pop("_rows")
    with pytest.raises(InvalidInput) as invalid:
        proposed_config({"config": {}}, described, replace=True)
    assert invalid.value.field == "rules[0].position" and _field_of(invalid.value, rows) == "rules.1.position"


def test_the_stored_rules_come_back_as_rows_with_a_blank_one_to_add():
    rows = form_rows({"rules": [{"type": "boost", "filter": {"tags": ["x"]}, "amount": 0.5, "start": "2026-01-01"}]})
    assert rows[0] == {"type": "boost", "filter": '{"tags": ["x"]}', "amount": "0.5", "item_id": "", "position": "",
                       "start": "2026-01-01", "end": ""}
    assert rows[1] == dict.fromkeys(rows[0], "")
