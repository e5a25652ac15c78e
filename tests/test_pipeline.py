"""Dagster: the definitions load, every asset materializes, checks run, a failure is named."""

import json

import pytest
from dagster import DagsterInstance

from lodestar.cdp import open_cdp
from lodestar.index import open_index_store
from lodestar.lineage.embeddings import read_embeddings
from lodestar.lineage.files import TenantFiles
from lodestar.records import parse_item
from tests.conftest import materialize_tenant

pytestmark = pytest.mark.model  # the real all-MiniLM-L6-v2 (the fast tier: pytest -m "not model")


def test_definitions_load():
    from pipelines.definitions import defs

    definitions = defs()  # what Dagster's loader calls when the code location loads
    job = definitions.resolve_job_def("materialize_tenant")
    assert job.partitions_def is not None
    keys = {k.to_user_string() for k in definitions.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"cdp_items", "cdp_users", "cdp_events", "item_features", "user_features", "item_embeddings",
                    "collab_model", "offline_evaluation", "tenant_index", "published_index", "attribution_report",
                    "experiment_report", "ads_report", "audience_segments", "ad_quality_model"}
    check_names = {c.name for c in definitions.resolve_asset_graph().asset_check_keys}
    assert {"schema_and_rows", "dimension_and_nan", "point_count_matches_items", "canary_query",
            "no_regression"} <= check_names


def test_materialized_tenant_has_every_stage(env):
    files = TenantFiles(env.settings.tenant_dir("alpha"))
    ids, vectors = read_embeddings(files)
    store = open_cdp(env.settings)
    try:
        available = sum(1 for b in store.read_changes("alpha", "items") for i in b if i["available"] and not i["deleted"])
    finally:
        store.close()
    assert len(ids) == available and vectors.shape == (available, 384)
    index_store = open_index_store(env.settings)
    version = index_store.published("alpha")
    reader = index_store.open("alpha", version)
    try:
        assert reader.count() == available
    finally:
        reader.close()
    for path in (files.extract("items"), files.extract("events"), files.item_features, files.user_features):
        assert path.is_file()


def test_checks_and_metadata_are_recorded(settings):
    from tests.conftest import load_demo_tenant

    store = open_cdp(settings)
    try:
        load_demo_tenant(store, settings, "shop", "shop", n_items=24, n_users=6)
    finally:
        store.close()
    result = materialize_tenant(settings, "shop")
    assert result.success
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"schema_and_rows": True, "dimension_and_nan": True, "no_regression": True,
                           "point_count_matches_items": True, "canary_query": True, "popularity_sane": True,
                           "finite_model": True, "not_worse_than_published": True}
    meta = {m.asset_key.to_user_string(): m.metadata for m in result.get_asset_materialization_events() and
            [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]}
    assert meta["cdp_items"]["rows"].value == 24
    assert meta["item_embeddings"]["dimension"].value == 384
    assert meta["published_index"]["version"].value == open_index_store(settings).published("shop")


def test_failed_step_is_named_and_published_index_keeps_serving(settings, monkeypatch):
    from pipelines.run import materialize_tenant as run_via_job
    from tests.conftest import load_demo_tenant

    monkeypatch.setenv("LODESTAR_DATA_DIR", str(settings.data_dir))
    store = open_cdp(settings)
    try:
        load_demo_tenant(store, settings, "shop", "shop", n_items=24, n_users=6)
        with DagsterInstance.ephemeral() as instance:
            first = run_via_job(instance, "shop")
            assert first.success, first.failures
            published = open_index_store(settings).published("shop")
            # Every item becomes unavailable: there is nothing to index, so tenant_index fails.
            ids = [i["id"] for b in store.read_changes("shop", "items") for i in b]
            store.upsert_items("shop", [parse_item({"id": i, "title": "gone", "available": False}) for i in ids])
            second = run_via_job(instance, "shop")
    finally:
        store.close()
    assert not second.success
    assert second.failures and second.failures[0][0] == "tenant_index"
    assert "no available items" in second.failures[0][1]
    assert open_index_store(settings).published("shop") == published
    pointer = json.loads((settings.tenant_dir("shop") / "index" / "PUBLISHED").read_text())
    assert pointer["version"] == published


def test_committed_instance_config_loads(tmp_path):
    """dagster_home/dagster.yaml is what `lodestar materialize` and `lodestar ui` use."""
    import shutil
    from pathlib import Path

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml", home)
    with DagsterInstance.from_config(str(home)) as instance:
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits[0]["key"] == "dagster/partition" and limits[0]["limit"] == 1


def test_evaluation_gate_blocks_a_worse_version(settings):
    from tests.conftest import load_demo_tenant

    store = open_cdp(settings)
    try:
        load_demo_tenant(store, settings, "shop", "shop", n_items=60, n_users=40)
    finally:
        store.close()
    first = materialize_tenant(settings, "shop")
    assert first.success
    index_store = open_index_store(settings)
    record = index_store.published_record("shop")
    assert 0 < record["ndcg@10"] < 1  # the published version remembers its evaluation
    store = open_cdp(settings)
    try:  # and the audit log keeps it for the console's chart, after the version itself is gone
        (entry,) = store.read_audit("shop", action_prefix="index.publish")
        report = store.get_report("shop", "activity")
    finally:
        store.close()
    assert entry["target"] == record["version"] and entry["actor"].startswith("pipeline:")
    assert entry["after"]["ndcg@10"] == record["ndcg@10"] and 0 <= entry["after"]["popularity_ndcg@10"] < 1
    assert sum(n for row in report["rows"] for k, n in row.items() if k != "day") > 0
    # Pretend the published version was far better: the next version must not replace it.
    index_store.publish("shop", record["version"], {"points": record["points"], "ndcg@10": 0.99})
    second = materialize_tenant(settings, "shop")
    gate = next(e for e in second.get_asset_check_evaluations() if e.check_name == "no_regression")
    assert not gate.passed and "below the published version's 0.9900" in gate.metadata["why"].value
    materialized = {e.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
    assert "tenant_index" in materialized and "published_index" not in materialized
    assert index_store.published("shop") == record["version"]
