import pytest

from lodestar.errors import InvalidInput
from lodestar.records import parse_event, parse_item, parse_timestamp, parse_user


def test_item_from_csv_style_row():
    item = parse_item({"id": "7", "title": " Boot ", "categories": "hiking|outdoor|hiking", "tags": "",
                       "attributes": '{"price": 10.5}', "available": "false", "updated_at": "2024-05-01T00:00:00Z"})
    assert item["id"] == "7" and item["title"] == "Boot"
    assert item["categories"] == ["hiking", "outdoor"]
    assert item["tags"] == [] and item["attributes"] == {"price": 10.5}
    assert item["available"] is False and item["kind"] == "product"
    assert item["source_updated_at"] == 1714521600.0


@pytest.mark.parametrize(
    "row, message",
    [
        ({"title": "no id"}, "id is required"),
        ({"id": "1", "kind": "service"}, "kind must be one of"),
        ({"id": "1", "attributes": "{not json"}, "attributes is not valid JSON"),
        ({"id": "1", "attributes": [1, 2]}, "attributes must be an object"),
        ({"id": "1", "available": "maybe"}, "available must be true or false"),
        ({"id": "1", "updated_at": "yesterday"}, "is not a timestamp"),
        ({"id": "1", "categories": 5}, "categories must be a list"),
    ],
)
def test_item_rejections_say_what_is_wrong(row, message):
    with pytest.raises(InvalidInput, match=message):
        parse_item(row)


def test_event_needs_type_ts_and_rating_value():
    ok = parse_event({"user_id": 1, "item_id": 2, "type": "Purchase", "ts": "1700000000"})
    assert ok["user_id"] == "1" and ok["type"] == "purchase" and ok["ts"] == 1700000000.0
    assert ok["id"] == parse_event({"user_id": "1", "item_id": "2", "type": "purchase", "ts": 1700000000})["id"]
    with pytest.raises(InvalidInput, match="type must be one of"):
        parse_event({"user_id": 1, "item_id": 2, "type": "hover", "ts": 1})
    with pytest.raises(InvalidInput, match="ts is required"):
        parse_event({"user_id": 1, "item_id": 2, "type": "view"})
    with pytest.raises(InvalidInput, match="rating event needs a numeric value"):
        parse_event({"user_id": 1, "item_id": 2, "type": "rating", "ts": 1})
    with pytest.raises(InvalidInput, match="value must be a number"):
        parse_event({"user_id": 1, "item_id": 2, "type": "rating", "ts": 1, "value": "five"})
    assert parse_event({"user_id": 1, "item_id": 2, "type": "view"}, default_ts=5.0)["ts"] == 5.0


def test_user_and_timestamps():
    assert parse_user({"id": "u", "deleted": "1"})["deleted"] is True
    assert parse_timestamp("2024-01-01T01:00:00+01:00", "ts") == 1704067200.0
    assert parse_timestamp(None, "ts") is None
