"""Import: the reject path, every file format, idempotent re-import, MovieLens."""

import json

import pandas as pd
import pytest

from lodestar.errors import InvalidInput
from lodestar.importer import import_files, import_movielens
from tests.conftest import MOVIELENS


def _rejects(summary, entity):
    result = next(e for e in summary.entities if e.entity == entity)
    if not result.reject_file:
        return result, []
    with open(result.reject_file) as fh:
        return result, [json.loads(line) for line in fh]


def test_jsonl_rejects_bad_rows_with_line_and_reason_and_keeps_good_ones(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "a", "title": "Good one"}),
        "{not json",
        json.dumps({"title": "no id"}),
        json.dumps({"id": "b", "kind": "gadget"}),
        "",
        json.dumps({"id": "c", "title": "Also good", "categories": ["x"]}),
        json.dumps(["a", "list"]),
    ]) + "\n")
    summary = import_files(store, settings, "acme", {"items": path})
    result, rejects = _rejects(summary, "items")
    assert (result.accepted, result.rejected, result.changed) == (2, 4, 2)
    assert [(r["line"], r["reason"].split(" ")[0]) for r in rejects] == [(2, "not"), (3, "id"), (4, "kind"), (7, "a")]
    assert "kind must be one of product, content" in rejects[2]["reason"]
    assert rejects[1]["row"] == {"title": "no id"}
    assert rejects[0]["row"] == "{not json" and rejects[3]["row"] == ["a", "list"]
    assert store.get_item("acme", "a")["title"] == "Good one"
    assert store.get_item("acme", "c")["categories"] == ["x"]
    summary_file = json.loads((tmp_path / "var" / "imports" / "acme").glob("*/summary.json").__next__().read_text())
    assert summary_file["entities"][0]["rejected"] == 4


def test_csv_lists_attributes_and_reimport_is_idempotent(settings, store, tmp_path):
    store.create_tenant("acme")
    items = tmp_path / "items.csv"
    items.write_text(
        "id,title,categories,tags,attributes,available\n"
        '1,Boot,hiking|outdoor,sale,"{""price"": 99.5, ""brand"": ""acme""}",true\n'
        '2,Broken,x,,"{bad json",true\n'
        "3,Mug,kitchen,,,false\n"
    )
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,type,value,ts\nu1,1,view,,2024-01-01T00:00:00Z\nu1,1,rating,,1704067200\n")
    summary = import_files(store, settings, "acme", {"items": items, "events": events})
    item_result, item_rejects = _rejects(summary, "items")
    assert (item_result.accepted, item_result.rejected) == (2, 1)
    assert item_rejects[0]["line"] == 3 and "attributes is not valid JSON" in item_rejects[0]["reason"]
    assert store.get_item("acme", "1")["attributes"] == {"price": 99.5, "brand": "acme"}
    assert store.get_item("acme", "3")["available"] is False
    event_result, event_rejects = _rejects(summary, "events")
    assert (event_result.accepted, event_result.rejected) == (1, 1)
    assert "rating event needs a numeric value" in event_rejects[0]["reason"]

    again = import_files(store, settings, "acme", {"items": items, "events": events})
    assert [e.changed for e in again.entities] == [0, 0]
    assert store.count("acme", "items") == 2 and store.count("acme", "events") == 1


def test_parquet_import(settings, store, tmp_path):
    store.create_tenant("acme")
    path = tmp_path / "users.parquet"
    pd.DataFrame({"id": ["u1", "u2", None], "attributes": ['{"age": 30}', None, None]}).to_parquet(path)
    summary = import_files(store, settings, "acme", {"users": path})
    result, rejects = _rejects(summary, "users")
    assert (result.accepted, result.rejected) == (2, 1)
    assert rejects[0]["line"] == 3 and rejects[0]["reason"] == "id is required"


def test_clear_errors_for_unusable_input(settings, store, tmp_path):
    store.create_tenant("acme")
    with pytest.raises(InvalidInput, match="unknown file type '.xml'"):
        import_files(store, settings, "acme", {"items": tmp_path / "items.xml"})
    with pytest.raises(InvalidInput, match="no such file"):
        import_files(store, settings, "acme", {"items": tmp_path / "missing.jsonl"})
    with pytest.raises(InvalidInput, match="does not exist"):
        import_files(store, settings, "ghost", {"items": tmp_path / "items.jsonl"})
    with pytest.raises(InvalidInput, match="not a MovieLens directory"):
        import_movielens(store, settings, "acme", tmp_path)


def test_movielens_format(settings, store, tmp_path):
    store.create_tenant("ml")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, The (1995)",(no genres listed)\n'
    )
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,x,964982704\n7,2,3.5,964982705\n9,404,5.0,1\n"
    )
    (tmp_path / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar,2\n")
    summary = import_movielens(store, settings, "ml", tmp_path)
    counts = {e.entity: (e.accepted, e.rejected) for e in summary.entities}
    assert counts == {"items": (2, 0), "events": (2, 2), "users": (2, 0)}
    _, rejects = _rejects(summary, "events")
    assert [r["reason"] for r in rejects] == ["value must be a number, got 'x'", "movieId 404 is not in movies.csv"]
    assert rejects[1]["row"]["movieId"] == "404"
    toy = store.get_item("ml", "1")
    assert toy["kind"] == "content" and toy["categories"] == ["Adventure", "Animation"] and toy["tags"] == ["pixar"]
    assert store.get_item("ml", "2")["categories"] == []
    assert store.user_events("ml", "1")[0]["value"] == 4.0


@pytest.mark.skipif(not MOVIELENS.is_dir(), reason="../shared/data/movielens-small is not present")
def test_movielens_small_imports_completely(settings, store):
    import csv

    with (MOVIELENS / "movies.csv").open(newline="") as fh:
        movies = {row["movieId"] for row in csv.DictReader(fh)}
    with (MOVIELENS / "ratings.csv").open(newline="") as fh:
        ratings = list(csv.DictReader(fh))
    known = [r for r in ratings if r["movieId"] in movies]
    store.create_tenant("ml")
    summary = import_movielens(store, settings, "ml", MOVIELENS)
    counts = {e.entity: (e.accepted, e.rejected) for e in summary.entities}
    assert counts == {
        "items": (len(movies), 0),
        "events": (len(known), len(ratings) - len(known)),
        "users": (len({r["userId"] for r in known}), 0),
    }
    assert store.count("ml", "events") == len(known)
