"""Connectors (issue 19): each source format's sample imports its good rows, rejects its bad ones
with line and reason, and a second import changes nothing; the mapping is the tenant's
configuration; Segment messages arrive live over HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from lodestar.cdp import cdp_session
from lodestar.connectors.importing import import_source
from lodestar.errors import InvalidInput
from lodestar.keys import issue_key
from lodestar.tenant_config import validate_config
from tests.helpers import app_settings_with, bearer

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "connectors"
T0 = 1761955200.0  # the samples' first second: 2025-11-01T00:00:00Z


def _import(store, settings, tenant, fmt, path):
    (summary,) = import_source(store, settings, tenant, fmt, path)
    return summary


def _entity(summary, name):
    return next(e for e in summary.entities if e.entity == name)


def _rejects(summary, name):
    entity = _entity(summary, name)
    if not entity.reject_file:
        return []
    return [json.loads(line) for line in Path(entity.reject_file).read_text().splitlines()]


def _events(store, tenant, user):
    return sorted((e["type"], e["item_id"], e["value"], e["ts"] - T0) for e in store.user_events(tenant, user))


def _nothing_changes_again(store, settings, tenant, fmt, path, first):
    again = _import(store, settings, tenant, fmt, path)
    assert [(e.entity, e.changed) for e in again.entities] == [(e.entity, 0) for e in again.entities]
    assert [(e.entity, e.accepted, e.rejected) for e in again.entities if e.entity == first.entities[0].entity] == \
        [(first.entities[0].entity, first.entities[0].accepted, first.entities[0].rejected)]
    assert again.skipped == first.skipped


# -- GA4 ----------------------------------------------------------------------------------------------
def test_ga4_export_imports_events_per_item_fills_the_catalog_and_rejects_bad_rows(settings, store):
    store.create_tenant("shop")
    store.upsert_items("shop", [{"id": "SKU-400", "kind": "product", "title": "Rain Shell", "description": "",
                                 "categories": [], "tags": [], "attributes": {"price": 140.0}, "available": True,
                                 "deleted": False, "source_updated_at": None}])
    summary = _import(store, settings, "shop", "ga4", SAMPLES / "ga4_events_20251101.jsonl")
    events = _entity(summary, "events")
    assert (events.accepted, events.rejected) == (9, 4)
    assert [(r["line"], r["reason"].split(" ")[0]) for r in _rejects(summary, "events")] == [
        (6, "items[1].item_id"), (7, "event_timestamp"), (8, "not"), (9, "the")]
    assert summary.skipped == {"event page_view (not mapped)": 1, "event session_start (not mapped)": 1}
    # One event per item; a purchase's value is item_revenue, else price x quantity.
    assert _events(store, "shop", "u1") == [("add_to_cart", "SKU-100", None, 30), ("purchase", "SKU-100", 178.0, 40),
                                           ("purchase", "SKU-200", 15.0, 40), ("view", "SKU-100", None, 10)]
    assert _events(store, "shop", "2207.1761950000") == [  # no user_id: the device's pseudo id
        ("impression", "SKU-100", None, 20), ("impression", "SKU-200", None, 20), ("impression", "SKU-300", None, 20)]
    assert _events(store, "shop", "u2") == [("purchase", "SKU-300", 24.5, 50)]  # the "(not set)" gift card: rejected
    # Items the catalog lacked come from the events' item fields; a stored item gets only its gaps filled.
    runner = store.get_item("shop", "SKU-100")
    assert (runner["title"], runner["categories"], runner["attributes"]) == \
        ("Trail Runner GTX", ["Apparel", "Shoes"], {"brand": "Kestrel", "price": 89.0})
    shell = store.get_item("shop", "SKU-400")
    assert shell["title"] == "Rain Shell" and shell["attributes"] == {"price": 140.0, "brand": "Kestrel"}
    # user_properties become profile attributes (int64 written as text is an integer again).
    assert store.get_user("shop", "u1")["attributes"] == {"membership": "gold", "lifetime_orders": 7}
    assert store.get_user("shop", "4410.1761900000") is None  # only a session_start: no user
    _nothing_changes_again(store, settings, "shop", "ga4", SAMPLES / "ga4_events_20251101.jsonl", summary)


def test_ga4_parquet_export_with_nested_records_imports_the_same(settings, store, tmp_path):
    """The BigQuery export as Parquet: items and user_properties are nested lists of structs, int64 as
    integers, and every column of the export (event_params, device, ...), of which only those a
    conversion reads are decoded (a rejected row's copy holds only those)."""
    rows = []
    for line in (SAMPLES / "ga4_events_20251101.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "event_timestamp" in row and "event_params" in row:
            row["event_timestamp"] = int(row["event_timestamp"])  # INT64 in Parquet
            for prop in row["user_properties"]:
                value = prop["value"]
                value["int_value"] = None if value["int_value"] is None else int(value["int_value"])
            for param in row["event_params"]:
                param["value"]["int_value"] = None if param["value"]["int_value"] is None else \
                    int(param["value"]["int_value"])
            rows.append(row)
    path = tmp_path / "events_20251101.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert "event_params" in pq.read_schema(path).names and "geo" in pq.read_schema(path).names
    store.create_tenant("shop")
    summary = _import(store, settings, "shop", "ga4", path)
    assert (_entity(summary, "events").accepted, _entity(summary, "events").rejected) == (9, 2)
    assert summary.skipped == {"event page_view (not mapped)": 1, "event session_start (not mapped)": 1}
    rejected = _rejects(summary, "events")
    assert set(rejected[-1]["row"]) == {"event_name", "event_timestamp", "user_id", "user_pseudo_id", "items",
                                        "user_properties"}  # the columns read, not event_params or geo
    assert _events(store, "shop", "u1")[1] == ("purchase", "SKU-100", 178.0, 40)
    assert store.get_user("shop", "u1")["attributes"] == {"membership": "gold", "lifetime_orders": 7}
    _nothing_changes_again(store, settings, "shop", "ga4", path, summary)


def test_ga4_mapping_is_the_tenants_configuration(settings, store):
    store.create_tenant("shop", {"connectors": {"ga4": {
        "events": {"add_to_cart": None, "view_item": "click"}, "user_id_fields": ["user_id"],
        "item_fields": {"item_brand": None, "item_list_name": "list"}}}})
    summary = _import(store, settings, "shop", "ga4", SAMPLES / "ga4_events_20251101.jsonl")
    assert summary.skipped["event add_to_cart (not mapped)"] == 1  # mapped to null: skipped
    assert summary.skipped["no user_id (connectors.ga4.user_id_fields)"] == 1  # the view_item_list's device id
    assert ("click", "SKU-100", None, 10) in _events(store, "shop", "u1")
    assert "add_to_cart" not in {e[0] for e in _events(store, "shop", "u1")}
    assert store.get_user("shop", "2207.1761950000") is None
    assert "brand" not in store.get_item("shop", "SKU-100")["attributes"]


# -- XDM ----------------------------------------------------------------------------------------------
def test_xdm_experience_events_import_with_primary_identity_and_reject_bad_rows(settings, store):
    store.create_tenant("shop")
    summary = _import(store, settings, "shop", "xdm", SAMPLES / "xdm_experience_events.jsonl")
    assert (_entity(summary, "events").accepted, _entity(summary, "events").rejected) == (7, 4)
    assert [(r["line"], r["reason"].split(" ")[0]) for r in _rejects(summary, "events")] == [
        (6, "timestamp"), (7, "productListItems[1].SKU"), (8, "no"), (10, "not")]
    assert summary.skipped == {"eventType web.webpagedetails.pageViews (not mapped)": 1}
    assert _events(store, "shop", "ecid-1") == [  # the primary identity; a purchase's value is priceTotal
        ("add_to_cart", "SKU-100", None, 20), ("purchase", "SKU-100", 178.0, 30), ("purchase", "SKU-200", 15.0, 30),
        ("view", "SKU-100", None, 0)]
    assert _events(store, "shop", "ecid-2") == [("view", "SKU-300", None, 40)]  # Analytics source data's endUserIDs
    assert _events(store, "shop", "ecid-3") == [("like", "SKU-400", None, 80), ("purchase", "SKU-300", 24.5, 60)]
    runner = store.get_item("shop", "SKU-100")  # price per unit: priceTotal / quantity
    assert (runner["title"], runner["categories"], runner["attributes"]) == \
        ("Trail Runner GTX", ["Apparel", "Shoes"], {"currency": "EUR", "price": 89.0})
    _nothing_changes_again(store, settings, "shop", "xdm", SAMPLES / "xdm_experience_events.jsonl", summary)


def test_xdm_identity_namespace_is_a_setting(settings, store):
    store.create_tenant("shop", {"connectors": {"xdm": {"identity_namespace": "CRMID"}}})
    summary = _import(store, settings, "shop", "xdm", SAMPLES / "xdm_experience_events.jsonl")
    assert len(store.user_events("shop", "crm-1")) == 4 and not store.user_events("shop", "ecid-1")
    reasons = [r["reason"] for r in _rejects(summary, "events")]
    assert sum("no identity of namespace CRMID" in r for r in reasons) == 4  # events of visitors never signed in


# -- Segment ------------------------------------------------------------------------------------------
def test_segment_messages_import_track_and_identify_and_reject_bad_rows(settings, store):
    store.create_tenant("shop")
    summary = _import(store, settings, "shop", "segment", SAMPLES / "segment_messages.jsonl")
    assert (_entity(summary, "events").accepted, _entity(summary, "events").rejected) == (6, 4)
    assert [(r["line"], r["reason"].split(" ")[0]) for r in _rejects(summary, "events")] == [
        (5, "properties.products[2].product_id"), (8, "properties.product_id"), (9, "type"), (10, "the")]
    assert summary.skipped == {"page messages (no product)": 1, "track Signed Up (not mapped)": 1}
    assert _events(store, "shop", "u1") == [("purchase", "SKU-100", 178.0, 40), ("purchase", "SKU-200", 15.0, 40),
                                           ("view", "SKU-100", None, 10)]
    assert _events(store, "shop", "anon-2") == [("add_to_cart", "SKU-200", None, 30)]  # no userId: anonymousId
    assert _events(store, "shop", "u2") == [("rating", "SKU-300", 4.0, 60)]  # Product Reviewed's rating
    assert _events(store, "shop", "u3") == [("click", "SKU-300", None, 100)]  # from a batch line; product_clicked
    # identify traits are profile attributes; contact details are left out.
    assert store.get_user("shop", "u1")["attributes"] == {"plan": "pro", "favorite_categories": ["Shoes", "Outdoor"]}
    assert store.get_user("shop", "u3")["attributes"] == {"plan": "free"}
    assert store.get_item("shop", "SKU-100")["attributes"] == {"brand": "Kestrel", "price": 89.0}
    _nothing_changes_again(store, settings, "shop", "segment", SAMPLES / "segment_messages.jsonl", summary)


# -- Google Merchant ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", ["google_merchant_products.tsv", "google_merchant_products.xml"])
def test_google_merchant_feed_imports_items_and_rejects_bad_products(settings, store, sample):
    store.create_tenant("shop")
    summary = _import(store, settings, "shop", "google-merchant", SAMPLES / sample)
    items = _entity(summary, "items")
    rejects = [(r["line"], r["reason"]) for r in _rejects(summary, "items")]
    if sample.endswith(".tsv"):
        assert (items.accepted, items.rejected) == (3, 3)
        assert [(line, reason.split(" ")[0]) for line, reason in rejects] == [(5, "price"), (6, "availability"),
                                                                              (7, "product")]
    else:
        assert (items.accepted, items.rejected) == (3, 1)
        assert rejects[0][0] == 37 and rejects[0][1].startswith("id is missing")  # the line its <item> opens on
    runner = store.get_item("shop", "SKU-100")
    assert runner["title"] == "Trail Runner GTX" and runner["description"].startswith("Waterproof trail running shoe")
    assert runner["categories"] == ["Apparel", "Shoes", "Trail running"]  # product_type's levels
    assert {k: runner["attributes"][k] for k in ("price", "currency", "brand", "link")} == {
        "price": 89.0, "currency": "USD", "brand": "Kestrel", "link": "https://shop.example/p/SKU-100"}
    socks = store.get_item("shop", "SKU-200")  # "in stock" as older feeds write it; a sale price
    assert socks["available"] is True and socks["attributes"]["sale_price"] == 12.0
    bottle = store.get_item("shop", "SKU-300")
    assert bottle["available"] is False
    assert bottle["categories"] == (["Outdoor", "Hydration"] if sample.endswith(".tsv") else
                                    ["Sporting Goods", "Outdoor Recreation", "Camping & Hiking"])
    _nothing_changes_again(store, settings, "shop", "google-merchant", SAMPLES / sample, summary)


def test_a_feed_declaring_entities_is_refused_before_anything_is_imported(settings, store, tmp_path):
    store.create_tenant("shop")
    bomb = tmp_path / "feed.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                    '<rss><channel><item><id>1</id><title>&b;</title></item></channel></rss>')
    with pytest.raises(InvalidInput, match="refused"):
        _import(store, settings, "shop", "google-merchant", bomb)
    assert store.count("shop", "items") == 0
    broken = tmp_path / "broken.xml"
    broken.write_text((SAMPLES / "google_merchant_products.xml").read_text().replace("</item>\n    <item>\n      "
                                                                                      "<g:title>A product", "<item>", 1))
    summary = _import(store, settings, "shop", "google-merchant", broken)
    assert _entity(summary, "items").accepted == 1  # the products before the break
    assert "not well-formed" in _rejects(summary, "items")[-1]["reason"]


# -- shared -------------------------------------------------------------------------------------------
def test_connector_configuration_is_validated_field_by_field():
    for bad, field in (({"ga4": {"events": {"view_item": "viewed"}}}, "connectors.ga4.events.view_item"),
                       ({"ga5": {}}, "connectors.ga5"),
                       ({"xdm": {"identity_namespace": 3}}, "connectors.xdm.identity_namespace"),
                       ({"segment": {"anonymous_users": "yes"}}, "connectors.segment.anonymous_users"),
                       ({"google_merchant": {"colour": {}}}, "connectors.google_merchant.colour")):
        with pytest.raises(InvalidInput) as caught:
            validate_config({"connectors": bad})
        assert caught.value.field == field
    validate_config({"connectors": {"segment": {"events": {"Cart Viewed": "view", "Product Viewed": None}}}})


def test_a_directory_imports_each_file_in_order(settings, store, tmp_path):
    store.create_tenant("shop")
    shards = tmp_path / "export"
    shards.mkdir()
    lines = (SAMPLES / "segment_messages.jsonl").read_text().splitlines()
    (shards / "a.jsonl").write_text("\n".join(lines[:5]) + "\n")
    (shards / "b.jsonl").write_text("\n".join(lines[5:]) + "\n")
    (shards / "notes.md").write_text("not a shard")
    summaries = import_source(store, settings, "shop", "segment", shards)
    assert [_entity(s, "events").accepted for s in summaries] == [4, 2]
    with pytest.raises(InvalidInput, match="no such file or directory"):
        import_source(store, settings, "shop", "segment", tmp_path / "nothing-here")
    with pytest.raises(InvalidInput, match="unknown format"):
        import_source(store, settings, "shop", "snowplow", shards)


@pytest.mark.slow  # the installed command in a process of its own
def test_the_cli_imports_each_format_and_says_what_was_skipped(tmp_path):
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LODESTAR_")},
           "LODESTAR_DATA_DIR": str(tmp_path / "var"), "LODESTAR_EMBED_MODEL": "hashing-64"}
    lodestar = str(Path(sys.executable).with_name("lodestar"))

    def run(*args):
        done = subprocess.run([lodestar, *args], env=env, capture_output=True, text=True, timeout=120)
        done.said = done.stdout + done.stderr
        return done

    assert run("tenants", "create", "shop").returncode == 0
    feed = run("cdp", "import", "--tenant", "shop", "--format", "google-merchant",
               str(SAMPLES / "google_merchant_products.tsv"))
    assert feed.returncode == 0 and "items: 3 accepted (3 new or changed), 3 rejected" in feed.said
    ga4 = run("cdp", "import", "--tenant", "shop", "--format", "ga4", str(SAMPLES / "ga4_events_20251101.jsonl"))
    assert ga4.returncode == 0, ga4.said
    assert "events: 9 accepted (9 new or changed), 4 rejected" in ga4.said
    assert "skipped, not errors: 1 event page_view (not mapped), 1 event session_start (not mapped)" in ga4.said
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text('{"type": "track"}\n')
    assert run("cdp", "import", "--tenant", "shop", "--format", "segment", str(only_bad)).returncode == 1
    mixed = run("cdp", "import", "--tenant", "shop", "--format", "xdm", "--events", str(only_bad))
    assert mixed.returncode == 2 and "not --items/--users/--events" in mixed.said


def test_the_dagster_job_imports_a_source(settings, store):
    from assets.resources import LodestarResource
    from pipelines.jobs import connector_import

    store.create_tenant("shop")
    result = connector_import.execute_in_process(
        run_config={"ops": {"import_source_files": {"config": {
            "tenant": "shop", "format": "google-merchant", "path": str(SAMPLES / "google_merchant_products.tsv")}}}},
        resources={"lodestar": LodestarResource(data_dir=str(settings.data_dir))})
    assert result.success
    assert result.output_for_node("import_source_files")["accepted"] == 3
    assert store.get_item("shop", "SKU-100")["title"] == "Trail Runner GTX"


def _ga4_row(name, seconds, items, **fields):
    return {"event_name": name, "event_timestamp": str(int((T0 + seconds) * 1e6)), "user_id": "u1",
            "user_pseudo_id": "1.1", "items": items, **fields}


def test_one_product_twice_in_an_order_is_one_event_worth_both(settings, store, tmp_path):
    store.create_tenant("shop")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        _ga4_row("purchase", 0, [{"item_id": "A", "price": 5, "quantity": 1},
                                 {"item_id": "A", "price": 5, "quantity": 3}, {"item_id": "B", "price": "4.50"}]),
        _ga4_row("view_item", 10, [{"item_id": "A"}, {"item_id": "A"}]),
    ]) + "\n")
    summary = _import(store, settings, "shop", "ga4", path)
    assert _entity(summary, "events").changed == 3
    assert _events(store, "shop", "u1") == [("purchase", "A", 20.0, 0), ("purchase", "B", 4.5, 0),
                                           ("view", "A", None, 10)]
    assert store.get_item("shop", "B")["attributes"]["price"] == 4.5  # a price written as text is a number


def test_deleted_items_and_erased_users_are_not_brought_back(settings, store, tmp_path):
    from lodestar.records import parse_item

    store.create_tenant("shop")
    store.upsert_items("shop", [parse_item({"id": "GONE", "title": "Old"})])
    store.upsert_items("shop", [parse_item({"id": "GONE", "deleted": True})])  # no updated_at: no stamp to compare
    store.upsert_users("shop", [{"id": "u1", "attributes": {"plan": "pro"}, "deleted": False, "source_updated_at": None}])
    store.erase_user("shop", "u1")
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(_ga4_row("view_item", 0, [{"item_id": "GONE", "item_name": "Old product"}],
                                        user_properties=[{"key": "plan", "value": {"string_value": "pro"}}])) + "\n")
    summary = _import(store, settings, "shop", "ga4", path)
    assert _entity(summary, "events").accepted == 1  # the event is the shop's data
    assert store.get_item("shop", "GONE") is None and store.deleted_ids("shop", "items", ["GONE"]) == {"GONE"}
    assert store.get_user("shop", "u1") is None and store.deleted_ids("shop", "users", ["u1"]) == {"u1"}


def test_an_older_export_imported_later_does_not_undo_newer_profile_values(settings, store, tmp_path):
    store.create_tenant("shop")

    def identify(name, seconds, traits):
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps({"type": "identify", "userId": "u1", "traits": traits,
                                    "timestamp": f"2025-11-01T00:00:{seconds:02d}Z"}) + "\n")
        _import(store, settings, "shop", "segment", path)

    identify("newer", 50, {"plan": "gold"})
    identify("older", 10, {"plan": "free", "country": "DE"})
    assert store.get_user("shop", "u1")["attributes"] == {"plan": "gold", "country": "DE"}  # gaps filled only
    identify("newest", 59, {"plan": "platinum"})
    assert store.get_user("shop", "u1")["attributes"] == {"plan": "platinum", "country": "DE"}


def test_rows_of_the_wrong_shape_are_rejected_not_fatal(settings, store, tmp_path):
    store.create_tenant("shop")
    path = tmp_path / "xdm.jsonl"
    good = {"timestamp": "2025-11-01T00:00:00Z", "eventType": "commerce.productViews",
            "identityMap": {"ECID": [{"id": "e1", "primary": True}]}, "productListItems": [{"SKU": "A"}]}
    path.write_text("\n".join(json.dumps(r) for r in [
        {**good, "productListItems": [{"SKU": "A", "productCategories": 7}]},
        {**good, "identityMap": {"ECID": "e1"}},
        {**good, "productListItems": [{"SKU": "B", "priceTotal": {"value": 3}}]},
        [1, 2],
        {**good, "timestamp": "2025-11-01T00:00:01Z"},
    ]) + "\n" + '{"eventType": "commerce.productViews", "x": ' + "9" * 5000 + "}\n")
    summary = _import(store, settings, "shop", "xdm", path)
    assert _entity(summary, "events").accepted == 2
    assert [r["line"] for r in _rejects(summary, "events")] == [2, 3, 4, 6]
    assert "priceTotal must be a number" in _rejects(summary, "events")[1]["reason"]


def test_ga4_cookieless_pings_are_skipped_and_a_bad_event_creates_no_item(settings, store, tmp_path):
    store.create_tenant("shop")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {**_ga4_row("page_view", 0, []), "user_id": None, "user_pseudo_id": None},
        _ga4_row("view_item", 1, [{"item_id": "X" * 300, "item_name": "Too long an id"}]),
    ]) + "\n")
    summary = _import(store, settings, "shop", "ga4", path)
    assert summary.skipped == {"rows without user_id or user_pseudo_id (consent mode's cookieless pings)": 1}
    assert "item_id is longer than 256" in _rejects(summary, "events")[0]["reason"]
    assert store.count("shop", "items") == 0 and store.get_user("shop", "u1") is None


def test_merchant_prices_atom_feeds_and_an_entity_feed_in_a_directory(settings, store, tmp_path):
    from lodestar.connectors.google_merchant import price

    assert price("1,299.00 USD", "price") == (1299.0, "USD") and price("1.299,00 EUR", "price") == (1299.0, "EUR")
    assert price("15,5 EUR", "price") == (15.5, "EUR") and price("7", "price") == (7.0, None)
    for bad in ("1,000 USD", "1,2,3 USD", "12,34.56 USD", "USD 5", "5.001 USD"):
        with pytest.raises(InvalidInput):
            price(bad, "price")
    store.create_tenant("shop")
    atom = tmp_path / "feed.xml"
    atom.write_text('<?xml version="1.0"?>\n<feed xmlns="http://www.w3.org/2005/Atom" '
                    'xmlns:g="http://base.google.com/ns/1.0">\n<title>Shop</title>\n'
                    '<entry>\n<id>tag:shop.example,2025:1</id>\n<title>Atom title</title>\n'
                    '<summary>A kettle that whistles.</summary>\n<link href="https://shop.example/k"/>\n'
                    '<g:id>K-1</g:id>\n<g:title>Whistling Kettle</g:title>\n<g:price>30.00 USD</g:price>\n'
                    '</entry>\n</feed>\n')
    summary = _import(store, settings, "shop", "google-merchant", atom)
    assert _entity(summary, "items").accepted == 1, _rejects(summary, "items")
    kettle = store.get_item("shop", "K-1")
    assert (kettle["title"], kettle["description"], kettle["attributes"]["link"]) == \
        ("Whistling Kettle", "A kettle that whistles.", "https://shop.example/k")
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / "a.tsv").write_text("id\ttitle\nZ-1\tZed\n")
    (feeds / "b.xml").write_text('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aa">]><rss><channel><item>'
                                 '<id>Z-2</id><title>&a;</title></item></channel></rss>')
    with pytest.raises(InvalidInput, match="refused"):
        import_source(store, settings, "shop", "google-merchant", feeds)
    assert store.get_item("shop", "Z-1") is None  # every file is checked before any row is imported


# -- live: Segment's HTTP tracking API ----------------------------------------------------------------
@pytest.fixture()
def live(tmp_path):
    settings = app_settings_with(tmp_path, "shop")
    with cdp_session(settings) as store:
        key = issue_key(store, "shop", ("events",))
        reader = issue_key(store, "shop", ("read",))
    with TestClient(create_app_for(settings)) as client:
        yield client, settings, key, reader


def create_app_for(settings):
    from serving.app import create_app

    return create_app(settings)


def _messages():
    out = []
    for line in (SAMPLES / "segment_messages.jsonl").read_text().splitlines():
        message = json.loads(line)
        out.extend(message["batch"] if "batch" in message else [message])
    return out


def test_segment_batch_over_http_answers_like_the_events_route(live):
    client, settings, key, reader = live
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    body = {"batch": _messages(), "sentAt": "2025-11-01T00:02:00Z", "writeKey": key, "context": {"library": {}}}
    answer = client.post("/v1/ingest/segment/batch", json=body, headers=basic)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert (reply["accepted"], reply["stored"]) == (6, 6)
    assert [(r["index"], r["reason"].split(" ")[0]) for r in reply["rejected"]] == [
        (4, "properties.products[2].product_id"), (7, "properties.product_id"), (8, "type"), (9, "the")]
    assert [n["index"] for n in reply["notes"]] == [2, 5]  # page, and an unmapped track: noted, not stored
    with cdp_session(settings) as store:  # durable before the 200
        assert len(store.user_events("shop", "u1")) == 3
        assert store.get_user("shop", "u1")["attributes"]["plan"] == "pro"
        assert store.get_item("shop", "SKU-100")["title"] == "Trail Runner GTX"
    again = client.post("/v1/ingest/segment/v1/batch", json=body, headers=bearer(key)).json()  # Segment's own path
    assert (again["accepted"], again["stored"]) == (6, 0)  # a retried batch is stored once

    single = client.post("/v1/ingest/segment/track", headers=bearer(key), json={
        "userId": "u7", "event": "Product Added", "properties": {"product_id": "SKU-200"}})
    assert single.status_code == 200 and single.json()["stored"] == 1
    identify = client.post("/v1/ingest/segment/identify", headers=bearer(key), json={
        "userId": "u7", "traits": {"plan": "gold", "email": "u7@example.com"}})
    assert identify.status_code == 200 and identify.json()["accepted"] == 0
    webhook = client.post("/v1/ingest/segment", headers=bearer(key), json={  # a webhook destination's post
        "type": "track", "userId": "u7", "event": "Product Viewed", "properties": {"product_id": "SKU-300"}})
    assert webhook.status_code == 200 and webhook.json()["stored"] == 1
    with cdp_session(settings) as store:
        assert store.get_user("shop", "u7")["attributes"] == {"plan": "gold"}
        assert {e["type"] for e in store.user_events("shop", "u7")} == {"add_to_cart", "view"}

    atomic = client.post("/v1/ingest/segment/batch?atomic=true", json=body, headers=bearer(key))
    assert atomic.status_code == 422 and atomic.json()["errors"][0]["field"] == "batch[4]"
    bad = client.post("/v1/ingest/segment/track", headers=bearer(key), json={"userId": "u7", "event": "Product Added"})
    assert bad.status_code == 422 and "product_id" in bad.json()["detail"]
    assert client.post("/v1/ingest/segment/batch", json={"batch": []}, headers=bearer(key)).status_code == 422
    assert client.post("/v1/ingest/segment/batch", json=body, headers=bearer(reader)).status_code == 403
    wrong = {"Authorization": "Basic " + base64.b64encode(b"lsk_nope:").decode()}
    assert client.post("/v1/ingest/segment/batch", json=body, headers=wrong).status_code == 401
    elsewhere = client.post("/v1/events", json={"events": [{"user_id": "a", "item_id": "b", "type": "view"}]},
                            headers=basic)
    assert elsewhere.status_code == 401 and "Bearer" in elsewhere.json()["detail"]


def test_segment_messages_are_refused_one_by_one_as_events_are(live):
    client, settings, key, _reader = live
    long_id = "r" * 300
    view = {"type": "track", "userId": "u1", "event": "Product Viewed",
            "properties": {"product_id": "P1", "name": "One"}}
    mixed = [view, {"type": "identify", "userId": "x" * 300, "traits": {"plan": "a"}},
             {"type": "identify", "userId": "u2", "traits": {"plan": "b"}}]
    reply = client.post("/v1/ingest/segment/batch", json={"batch": mixed}, headers=bearer(key))
    assert reply.status_code == 200, reply.text
    assert [r["index"] for r in reply.json()["rejected"]] == [1] and reply.json()["stored"] == 1
    # Every event invalid: a 422, as POST /v1/events answers the same event, and its product is not created.
    bad = {**view, "properties": {"product_id": "P4", "name": "Four", "recommendation_id": long_id}}
    answer = client.post("/v1/ingest/segment/batch", json={"batch": [bad]}, headers=bearer(key))
    same = client.post("/v1/events", headers=bearer(key), json={"events": [
        {"user_id": "u1", "item_id": "P4", "type": "view", "recommendation_id": long_id}]})
    assert answer.status_code == same.status_code == 422
    assert answer.json()["errors"][0]["message"].endswith(same.json()["errors"][0]["message"])
    order = {"type": "track", "userId": "u3", "event": "Order Completed", "properties": {"products": [
        {"product_id": "P5", "price": 5, "quantity": 1}, {"product_id": "P5", "price": 5, "quantity": 3}]}}
    assert client.post("/v1/ingest/segment/batch", json={"batch": [order]}, headers=bearer(key)).json()["stored"] == 1
    with cdp_session(settings) as store:
        assert store.get_item("shop", "P4") is None and store.get_item("shop", "P1")["title"] == "One"
        assert store.get_user("shop", "u2")["attributes"] == {"plan": "b"}
        assert [e["value"] for e in store.user_events("shop", "u3")] == [20.0]


def test_segment_ingestion_follows_the_tenants_mapping_and_item_quota(live):
    client, settings, key, _reader = live
    with cdp_session(settings) as store:
        record = store.get_tenant("shop")
        store.set_tenant_config("shop", {"connectors": {"segment": {"events": {"Product Viewed": None,
                                                                               "Cart Viewed": "view"},
                                                                    "anonymous_users": False}},
                                         "quotas": {"items": 1}}, if_updated_at=record["updated_at"])
    messages = [
        {"type": "track", "userId": "u1", "event": "Product Viewed", "properties": {"product_id": "A"}},
        {"type": "track", "userId": "u1", "event": "cart_viewed", "properties": {"products": [
            {"product_id": "A", "name": "Alpha"}, {"product_id": "B", "name": "Beta"}]}},
        {"type": "track", "anonymousId": "anon", "event": "Cart Viewed", "properties": {"product_id": "A"}},
    ]
    import time

    deadline = time.monotonic() + 5  # the server re-reads a changed configuration within its refresh
    while True:
        reply = client.post("/v1/ingest/segment/batch", json={"batch": messages}, headers=bearer(key)).json()
        if reply["accepted"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply["accepted"] == 2, reply
    notes = [n["reason"] for n in reply["notes"]]
    assert notes[0] == "not stored: track Product Viewed (not mapped)"
    assert any("anonymous" in n for n in notes)
    assert any("quota of 1 items" in n for n in notes)  # Beta: the catalog is full
    with cdp_session(settings) as store:
        assert store.get_item("shop", "A")["title"] == "Alpha" and store.get_item("shop", "B") is None
        assert len(store.user_events("shop", "u1")) == 2  # events are the shop's data whatever the catalog holds


@pytest.mark.slow
@pytest.mark.model
def test_segments_own_library_sends_to_lodestar_and_the_next_recommendation_changes(env):
    """End to end: `lodestar serve` as a process, Segment's analytics-python as the source (host set to
    Lodestar, the tenant's key as its write key), and the user's next recommendation over HTTP."""
    import os
    import time

    import httpx
    import segment.analytics as analytics

    from tests.helpers import free_port, start_serve

    with cdp_session(env.settings) as store:
        coffee = [i["id"] for b in store.read_changes("alpha", "items") for i in b
                  if "coffee" in i["categories"] and i["available"]][:3]
        category = {i["id"]: i["categories"][0] for b in store.read_changes("alpha", "items") for i in b}
        key = issue_key(store, "alpha", ("events",))
    port = free_port()
    server = start_serve({**os.environ, "LODESTAR_DATA_DIR": str(env.settings.data_dir)}, port)
    try:
        base = f"http://127.0.0.1:{port}"
        user = f"segment-{time.time_ns()}"
        recommend = lambda: httpx.get(f"{base}/v1/users/{user}/recommendations?k=5",  # noqa: E731
                                      headers=bearer(env.keys["alpha"]), timeout=30).json()
        before = recommend()
        assert before["strategy"] == "popular"
        errors = []
        client = analytics.Client(write_key=key, host=f"{base}/v1/ingest/segment", sync_mode=True,
                                  on_error=lambda error, _batch: errors.append(error))
        client.identify(user, {"plan": "pro", "email": "someone@example.com"})
        for n, item in enumerate(coffee):
            client.track(user, "Product Viewed" if n else "Product Added", {"product_id": item, "price": 4.5})
        client.track(user, "Order Completed", {"order_id": "o-1", "products": [
            {"product_id": coffee[0], "price": 4.5, "quantity": 2}]})
        client.flush()
        assert not errors, errors
        after = recommend()  # no wait: a 200 from the batch means the events are stored
        assert after["strategy"] == "hybrid"
        assert not set(coffee) & {i["id"] for i in after["items"]}
        assert [category[i["id"]] for i in after["items"]].count("coffee") > \
            [category[i["id"]] for i in before["items"]].count("coffee")
        with cdp_session(env.settings) as store:
            assert {(e["type"], e["item_id"]) for e in store.user_events("alpha", user)} == {
                ("add_to_cart", coffee[0]), ("view", coffee[1]), ("view", coffee[2]), ("purchase", coffee[0])}
            assert store.get_user("alpha", user)["attributes"] == {"plan": "pro"}
    finally:
        server.terminate()
        server.wait(timeout=30)
