"""Experiments end to end, on a small demo shop (the hashing embedder, every asset through Dagster):
create one over the API, serve requests and clicks through the API, run ``experiment_report``,
read the per-variant report; validation, layers, stop and promote."""

from __future__ import annotations

import random

import pytest
from dagster import DagsterInstance, materialize
from litestar.testing import TestClient

from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import demo
from lodestar.cdp import cdp_session
from lodestar.importer import import_files
from lodestar.keys import issue_key
from lodestar.settings import Settings
from pipelines.definitions import all_assets
from serving.app import create_app

MODEL = "hashing-64"
BOOST = {"rules": [{"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.5}], "diversity": 0.3}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments")
    settings = Settings(data_dir=tmp / "var", embed_model=MODEL)
    with cdp_session(settings) as store:
        store.create_tenant("shop")
        key = issue_key(store, "shop")
        import_files(store, settings, "shop", demo.write_demo(tmp / "in", "shop", n_items=120, n_users=80))
    resource = LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS, ["shop"])
    assert materialize(all_assets(), partition_key="shop", instance=instance, resources={"lodestar": resource}).success
    return settings, key, resource, instance


@pytest.fixture()
def client(shop):
    with TestClient(create_app(shop[0])) as test_client:
        test_client.app.state.experiments._refresh = 0.0  # see each change at once (in production: within a second)
        yield test_client


def headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def definition(name: str, **changes) -> dict:
    return {"name": name, "hypothesis": "boosting sale items raises CTR", "placements": ["recommendations"],
            "variants": [{"name": "control", "weight": 1}, {"name": "boost", "weight": 1, "overlay": BOOST}],
            "primary_metric": "ctr", "min_days": 0, "mde": 1.0, "baseline": {"mean": 0.1, "sd": 0.1}, **changes}


def test_an_experiment_from_creation_to_report_and_promotion(client, shop):
    settings, key, resource, instance = shop
    made = client.post("/v1/experiments", json=definition("boost-sale"), headers=headers(key))
    assert made.status_code == 201, made.text
    record = made.json()
    assert record["status"] == "running" and [v["weight"] for v in record["variants"]] == [0.5, 0.5]
    assert record["plan"]["units"] == {"control": 17, "boost": 17} and record["plan"]["baseline"]["source"] == "given"

    rng, seen, sale_shown = random.Random(3), {}, {"control": [], "boost": []}
    with cdp_session(settings) as store:
        on_sale = {i["id"] for i in store.find("shop", "items", "", limit=1000) if "sale" in i["tags"]}
    for n in range(1, 81):
        user = f"u{n:04d}"
        served = client.get(f"/v1/users/{user}/recommendations?k=10", headers=headers(key)).json()
        seen[user] = served["variant"]
        sale_shown[served["variant"]].append(sum(i["id"] in on_sale for i in served["items"]))
        assert served["experiment"] == "boost-sale" and served["experiments"] == [
            {"experiment": "boost-sale", "variant": served["variant"]}]
        again = client.get(f"/v1/users/{user}/recommendations?k=10", headers=headers(key)).json()
        assert again["variant"] == served["variant"]  # the same user, the same variant
        clicks = [{"user_id": user, "item_id": i["id"], "type": "click", "recommendation_id": served["recommendation_id"]}
                  for i in served["items"] if rng.random() < (0.3 if served["variant"] == "boost" else 0.1)]
        if clicks:
            assert client.post("/v1/events", json={"events": clicks}, headers=headers(key)).status_code == 200
    assert 20 < list(seen.values()).count("boost") < 60
    # The variant's overlay is what it was served with: its boost rule shows more sale items.
    assert sum(sale_shown["boost"]) / len(sale_shown["boost"]) > sum(sale_shown["control"]) / len(sale_shown["control"])
    search = client.post("/v1/search", json={"query": "boots", "user_id": "u0001"}, headers=headers(key)).json()
    assert search["experiment"] is None  # the experiment runs on user recommendations only

    client.app.state.served_log.flush()
    result = materialize(all_assets(), selection=["cdp_events", "experiment_report"], partition_key="shop",
                         instance=instance, resources={"lodestar": resource})
    assert result.success
    report = client.get("/v1/experiments/boost-sale", headers=headers(key)).json()["report"]
    control, boost = report["variants"]
    # One look: the units and lists up to the moment both variants had their 17 units.
    assert report["horizon"]["reached"] and 17 <= control["units"] < 40 and 17 <= boost["units"] < 40
    assert min(control["units"], boost["units"]) == 17 and control["impressions"] == control["lists"] * 10
    assert report["srm"]["broken"] is False
    ctr = boost["metrics"]["ctr"]
    assert ctr["lift"] > 0.5 and ctr["lift_low"] < ctr["lift"] < ctr["lift_high"] and ctr["p_value"] < 0.05
    assert report["verdict"].startswith("winner: boost")

    promoted = client.post("/v1/experiments/boost-sale/promote", json={"variant": "boost"}, headers=headers(key))
    assert promoted.status_code == 200 and promoted.json()["stored"]["diversity"] == 0.3
    after = client.get("/v1/users/u0001/recommendations?k=5", headers=headers(key)).json()
    assert after["experiment"] is None  # stopped: everyone sees the (new) live configuration
    history = client.get("/v1/config/history", headers=headers(key)).json()["entries"]
    assert history[0]["target"] == "experiment boost-sale: boost"  # a configuration version: undo restores it
    audit = [e["action"] for e in client.get("/v1/audit", headers=headers(key)).json()["entries"]]
    assert "experiment.promote" in audit and "experiment.create" in audit
    client.post(f"/v1/config/restore/{history[0]['id']}", headers=headers(key))


def test_definitions_are_validated_field_by_field_and_layers_keep_experiments_apart(client, shop):
    key = shop[1]
    for change, field in ((dict(variants=[{"name": "control"}]), "variants"),
                          (dict(placements=["everywhere"]), "placements"),
                          (dict(variants=[{"name": "control", "overlay": BOOST}, {"name": "b"}]), "variants[0].overlay"),
                          (dict(variants=[{"name": "control"}, {"name": "b", "overlay": {"quotas": {"items": 1}}}]),
                           "variants[1].overlay.quotas"),
                          (dict(variants=[{"name": "control"}, {"name": "b", "overlay": {"ranking": {"collab": -1}}}]),
                           "variants[1].overlay.ranking.collab"),
                          (dict(primary_metric="happiness"), "primary_metric"),
                          (dict(traffic=1.5), "traffic"),
                          (dict(variants=[{"name": "control", "weight": 1e-6}, {"name": "b", "weight": 1e6}]),
                           "variants[0].weight"),
                          (dict(start="3000-01-01T00:00:00Z"), "start"),
                          (dict(baseline={"mean": True, "sd": 1}), "baseline"),
                          (dict(hypothesis=5), "hypothesis"),
                          (dict(baseline={"mean": 1e-12, "sd": 1e12}, mde=0.01), "mde")):
        answer = client.post("/v1/experiments", json=definition("bad", **change), headers=headers(key))
        assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == field, (change, answer.text)
    assert client.post("/v1/experiments", json=definition("first"), headers=headers(key)).status_code == 201
    clash = client.post("/v1/experiments", json=definition("second"), headers=headers(key))
    assert clash.status_code == 409 and "layer" in clash.json()["detail"]
    apart = client.post("/v1/experiments", json=definition("second", layer="ranking", traffic=0.5), headers=headers(key))
    assert apart.status_code == 201
    both = client.get("/v1/users/u0002/recommendations", headers=headers(key)).json()
    assert len(both["experiments"]) in (1, 2) and both["experiments"][0]["experiment"] == "first"
    inside = {u for u in (f"u{n:04d}" for n in range(1, 81)) if len(client.get(
        f"/v1/users/{u}/recommendations", headers=headers(key)).json()["experiments"]) == 2}
    ramp = client.post("/v1/experiments/second/traffic", json={"traffic": 1.0}, headers=headers(key))
    assert ramp.status_code == 200 and ramp.json()["traffic"] == 1.0
    everyone = [client.get(f"/v1/users/u{n:04d}/recommendations", headers=headers(key)).json()["experiments"]
                for n in range(1, 81)]
    assert all(len(e) == 2 for e in everyone) and len(inside) < 80  # the ramp-up kept everyone and added the rest
    assert client.post("/v1/experiments/second/traffic", json={"traffic": 0}, headers=headers(key)).status_code == 422
    for name in ("first", "second"):
        assert client.post(f"/v1/experiments/{name}/stop", headers=headers(key)).json()["status"] == "stopped"
    assert client.post("/v1/experiments/first/stop", headers=headers(key)).status_code == 409
    assert client.get("/v1/users/u0002/recommendations", headers=headers(key)).json()["experiments"] == []


def test_a_read_key_cannot_see_or_change_experiments(client, shop):
    settings = shop[0]
    with cdp_session(settings) as store:
        read = issue_key(store, "shop", ("read",))
    assert client.get("/v1/experiments", headers=headers(read)).status_code == 403
    assert client.post("/v1/experiments", json=definition("x"), headers=headers(read)).status_code == 403


def test_the_report_hides_results_until_the_horizon():
    from lodestar.experiments.report import experiment_report, per_list

    record = {"name": "e", "status": "running", "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}],
              "plan": {"units": {"a": 100, "b": 100}}, "start": 0.0, "end": None, "stopped_at": None, "min_days": 0,
              "primary_metric": "ctr", "guardrails": [], "alpha": 0.05, "placements": ["recommendations"]}
    served = [{"recommendation_id": f"r{n}", "user_id": f"u{n}", "unit_id": f"u{n}", "endpoint": "recommendations",
               "items": ["x"], "ts": 10.0, "experiments": [["e", "a" if n % 2 else "b"]], "strategy": "hybrid"}
              for n in range(40)]
    import pandas as pd

    report = experiment_report(record, per_list(served, pd.DataFrame()), now=100.0)
    assert not report["horizon"]["reached"] and report["verdict"].startswith("collecting")
    assert all("metrics" not in v for v in report["variants"]) and report["variants"][0]["units"] == 20


def test_assigning_a_variant_costs_a_lookup_when_no_experiment_runs():
    from serving.experiments import TenantExperiments

    class Store:
        reads = 0

        def list_experiments(self, tenant):
            Store.reads += 1
            return []

    now = [0.0]
    experiments = TenantExperiments(Store(), refresh_s=1.0, clock=lambda: now[0])
    config = object()
    for _ in range(100):
        assert experiments.apply("t", "recommendations", "u1", config) == (config, [])
    assert Store.reads == 1
    now[0] = 1.5
    experiments.apply("t", "recommendations", "u1", config)
    assert Store.reads == 2


def test_the_cli_creates_lists_stops_and_promotes(tmp_path, monkeypatch, capsys):
    from lodestar import cli

    monkeypatch.setenv("LODESTAR_DATA_DIR", str(tmp_path / "var"))
    assert cli.main(["tenants", "create", "acme"]) == 0
    spec = tmp_path / "exp.json"
    spec.write_text('{"name": "t1", "variants": [{"name": "control"}, {"name": "b", "overlay": {"diversity": 0.2}}]}')
    assert cli.main(["experiments", "create", "acme", str(spec)]) == 0
    assert "control needs" in capsys.readouterr().out
    assert cli.main(["experiments", "create", "acme", str(spec)]) == 2  # the name is taken
    assert "already has an experiment 't1'" in capsys.readouterr().err
    assert cli.main(["experiments", "promote", "acme", "t1", "b"]) == 0
    out = capsys.readouterr().out
    assert '"diversity": 0.2' in out
    assert cli.main(["experiments", "list", "acme"]) == 0
    assert '"status": "stopped"' in capsys.readouterr().out


def _lists(rows):
    import pandas as pd

    from lodestar.experiments.report import per_list

    events = pd.DataFrame([e for r in rows for e in r.pop("events", [])],
                          columns=["recommendation_id", "item_id", "type", "value", "user_id"])
    return per_list(rows, events)


def _row(n, variant, ts, clicks=0, purchase=None, experiment="e"):
    events = [{"recommendation_id": f"r{n}", "item_id": "x", "type": "click", "value": None, "user_id": f"u{n}"}] * clicks
    if purchase is not None:
        events.append({"recommendation_id": f"r{n}", "item_id": "x", "type": "purchase", "value": purchase,
                       "user_id": f"u{n}"})
    return {"recommendation_id": f"r{n}", "user_id": f"u{n}", "unit_id": f"user:u{n}", "endpoint": "recommendations",
            "items": ["x", "y"], "ts": ts, "experiments": [[experiment, variant]] if variant else [],
            "strategy": "hybrid", "events": events}


RECORD = {"name": "e", "status": "running", "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}],
          "plan": {"units": {"a": 10, "b": 10}}, "start": 0.0, "created_at": 0.0, "end": None, "stopped_at": None,
          "min_days": 0, "primary_metric": "ctr", "guardrails": ["revenue_per_user"], "alpha": 0.05,
          "placements": ["recommendations"]}


def test_results_are_frozen_at_the_horizon_and_later_traffic_never_changes_them():
    from lodestar.experiments.report import experiment_report

    rows = [_row(n, "a" if n % 2 else "b", ts=float(n), clicks=n % 3) for n in range(40)]
    first = experiment_report(RECORD, _lists([dict(r) for r in rows]), now=100.0)
    assert first["horizon"]["at"] == 19.0  # the 10th unit of each variant came at t=18 and t=19
    later = rows + [_row(n, "a" if n % 2 else "b", ts=float(n), clicks=2) for n in range(40, 400)]
    again = experiment_report(RECORD, _lists([dict(r) for r in later]), now=1000.0)
    assert again["variants"] == first["variants"] and again["verdict"] == first["verdict"]


def test_a_control_without_revenue_gives_a_verdict_not_an_error():
    from lodestar.experiments.report import experiment_report

    rows = [_row(n, "a" if n % 2 else "b", ts=float(n), clicks=1, purchase=None if n % 2 else 5.0) for n in range(40)]
    report = experiment_report(RECORD, _lists(rows), now=100.0)
    revenue = report["variants"][1]["metrics"]["revenue_per_user"]
    assert revenue["lift"] is None and revenue["mean"] == 5.0
    assert report["verdict"] == "no significant difference in ctr"


def test_baselines_size_new_experiments_from_lists_served_outside_experiments():
    from lodestar.experiments.lifecycle import plan
    from lodestar.experiments.report import baselines

    rows = [_row(n, None, ts=1000.0 + n * 3600, clicks=n % 2) for n in range(48)]
    rows.append(_row(99, "a", ts=1000.0, clicks=2))  # inside an experiment: left out
    found = {r["metric"]: r for r in baselines(_lists(rows), now=1000.0 + 48 * 3600)}
    assert found["ctr"]["units"] == 48 and abs(found["ctr"]["mean"] - 0.25) < 1e-9
    assert found["ctr"]["units_per_day"] == 24.51  # 48 units over 47 hours
    sized = plan({"primary_metric": "ctr", "placements": ["recommendations"], "baseline": None, "mde": 0.5,
                  "alpha": 0.05, "power": 0.8, "traffic": 1.0, "min_days": 0,
                  "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.5}]}, list(found.values()))
    assert sized["baseline"]["source"].startswith("history (48 units") and sized["days_estimate"] >= 1
