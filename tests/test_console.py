"""The console over HTTP (Litestar's test client, the real app on a copy of the session's two
published tenants): sign-in, sessions, CSRF, roles and tenant isolation on every route, and the
configuration's preview, save and restore as the API then serves it."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest
from litestar.testing import TestClient

from lodestar.accounts import add_member, ensure_account
from lodestar.cdp import open_cdp
from lodestar.settings import Settings
from serving.app import create_app

pytestmark = pytest.mark.model
PASSWORD = "correct horse battery staple"
OPERATOR_KEY = "operator-key-for-the-console-tests"
TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def console_settings(env, tmp_path_factory) -> Settings:
    """A copy of the session's data dir (alpha and beta published), with accounts: an owner, an
    editor and a viewer of alpha, an owner of beta and an operator."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("console") / "var", embed_model=env.settings.embed_model,
                        admin_key=OPERATOR_KEY)
    shutil.copytree(env.settings.data_dir, settings.data_dir)
    store = open_cdp(settings)
    try:
        for email, tenant, role in (("owner@alpha.test", "alpha", "owner"), ("editor@alpha.test", "alpha", "editor"),
                                    ("viewer@alpha.test", "alpha", "viewer"), ("owner@beta.test", "beta", "owner")):
            ensure_account(store, email, PASSWORD, "test")
            add_member(store, tenant, email, role, "test")
        ensure_account(store, "root@ops.test", PASSWORD, "test", operator=True)
    finally:
        store.close()
    return settings


@pytest.fixture()
def client(console_settings):
    with TestClient(app=create_app(console_settings)) as test_client:
        yield test_client


def token(client: TestClient, path: str = "/console/signin") -> str:
    page = client.get(path)
    return TOKEN.search(page.text).group(1)


def sign_in(client: TestClient, email: str, password: str = PASSWORD):
    return client.post("/console/signin", data={"_csrf_token": token(client), "email": email, "password": password,
                                                "next": "/console/"}, follow_redirects=False)


def test_pages_need_a_session_and_a_wrong_password_says_nothing_about_the_account(client):
    page = client.get("/console/t/alpha/config?x=1", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/console/signin?next=%2Fconsole%2Ft%2Falpha%2Fconfig%3Fx%3D1"
    unknown = sign_in(client, "nobody@alpha.test")
    wrong = sign_in(client, "owner@alpha.test", "not the password at all")
    assert unknown.status_code == wrong.status_code == 401
    assert "the email address or the password is not right" in wrong.text
    assert re.sub(r'value="[^"]*"', "", unknown.text) == re.sub(r'value="[^"]*"', "", wrong.text)
    signed = sign_in(client, "owner@alpha.test")
    assert signed.status_code == 303 and signed.headers["location"] == "/console/"
    cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith("lodestar_console="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    assert client.get("/console/", follow_redirects=False).headers["location"] == "/console/t/alpha"
    assert client.get("/console/t/alpha").status_code == 200
    client.post("/console/signout", data={"_csrf_token": token(client, "/console/t/alpha")})
    assert client.get("/console/t/alpha", follow_redirects=False).status_code == 303


def test_repeated_failed_sign_ins_are_slowed_down(client, console_settings):
    store = open_cdp(console_settings)
    try:
        ensure_account(store, "guessed@alpha.test", PASSWORD, "test")
    finally:
        store.close()
    for _ in range(5):
        assert sign_in(client, "guessed@alpha.test", "wrong password!!").status_code == 401
    refused = sign_in(client, "guessed@alpha.test", PASSWORD)  # even the right password waits now
    assert refused.status_code == 429 and "too many failed sign-ins for this account" in refused.text


def test_an_external_next_address_is_never_followed(client):
    answer = client.post("/console/signin", data={"_csrf_token": token(client), "email": "owner@alpha.test",
                                                  "password": PASSWORD, "next": "//evil.example/x"},
                         follow_redirects=False)
    assert answer.headers["location"] == "/console/"


def _console_routes(app, method: str) -> list[str]:
    return sorted({route.path for route in app.routes if route.path.startswith("/console/")
                   and not route.path.startswith("/console/static") and method in getattr(route, "methods", ())})


def _concrete(path: str, tenant: str) -> str:
    return (path.replace("{tenant:str}", tenant).replace("{item_id:str}", "x").replace("{user_id:str}", "u0001")
            .replace("{key_id:str}", "k").replace("{version_id:str}", "v").replace("{name:str}", "e"))


def test_every_state_changing_request_without_the_csrf_token_is_refused(client):
    assert sign_in(client, "root@ops.test").status_code == 303
    posts = _console_routes(client.app, "POST")
    assert len(posts) >= 12
    for path in posts:
        answer = client.post(_concrete(path, "alpha"), data={"name": "csrf-made", "email": "x@y.test", "role": "owner",
                                                             "label": "x", "confirm": "u0001"})
        assert answer.status_code == 403, path
        assert "CSRF token" in answer.text, path
    assert client.get("/console/tenants").text.count("csrf-made") == 0


def test_a_member_of_one_tenant_gets_403_on_every_page_and_action_of_another(client):
    assert sign_in(client, "owner@beta.test").status_code == 303
    csrf = token(client, "/console/t/beta")
    gets, posts = _console_routes(client.app, "GET"), _console_routes(client.app, "POST")
    tenant_gets = [p for p in gets if "{tenant:str}" in p]
    assert len(tenant_gets) >= 10
    for path in tenant_gets:
        answer = client.get(_concrete(path, "alpha"))
        text = html.unescape(answer.text)
        assert answer.status_code == 403 and "you have no role in tenant 'alpha'" in text, path
        assert "alpha" not in text.replace("tenant 'alpha'", ""), path
    for path in [p for p in posts if "{tenant:str}" in p]:
        assert client.post(_concrete(path, "alpha"), data={"_csrf_token": csrf}).status_code == 403, path
    assert client.get("/console/tenants").status_code == 403  # operators only
    assert client.get("/console/t/beta").status_code == 200


def test_a_viewer_sees_but_cannot_change_anything(client):
    assert sign_in(client, "viewer@alpha.test").status_code == 303
    page = client.get("/console/t/alpha/config")
    assert page.status_code == 200 and "you see the configuration but cannot change it" in page.text
    assert "Preview the change" not in page.text and "Restore" not in page.text
    assert client.get("/console/t/alpha/keys").status_code == 403
    csrf = token(client, "/console/t/alpha")
    for path in [p for p in _console_routes(client.app, "POST") if "{tenant:str}" in p]:
        answer = client.post(_concrete(path, "alpha"), data={"_csrf_token": csrf, "rules.0.type": "pin"})
        assert answer.status_code == 403 and "(you are viewer)" in html.unescape(answer.text), path


def _top(client: TestClient, key: str, user: str) -> list[str]:
    answer = client.get(f"/v1/users/{user}/recommendations?k=10", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    return [i["id"] for i in answer.json()["items"]]


def test_editing_a_rule_previews_saves_changes_what_the_api_serves_and_restores(client, env):
    key = env.keys["alpha"]
    before = _top(client, key, "u0001")
    pinned = next(i for i in ("p00090", "p00080", "p00070") if i not in before)
    assert sign_in(client, "editor@alpha.test").status_code == 303
    csrf = token(client, "/console/t/alpha/config")
    invalid = client.post("/console/t/alpha/config/preview", data={
        "_csrf_token": csrf, "rules.0.type": "pin", "rules.0.item_id": pinned, "rules.0.position": "0"})
    assert invalid.status_code == 422
    assert 'id="rules.0.position-error"' in invalid.text and "must be an integer from 1 to 100" in invalid.text
    preview = client.post("/console/t/alpha/config/preview", data={
        "_csrf_token": csrf, "rules.0.type": "pin", "rules.0.item_id": pinned, "rules.0.position": "1",
        "preview_user": "u0001"})
    assert preview.status_code == 200 and "Lists that change" in preview.text
    assert re.search(r"Lists that change</dt><dd>([1-9]\d*) of", preview.text)
    assert re.search(r'<ol class="side" id="list-now"><li>', preview.text)
    assert re.search(r'<ol class="side" id="list-proposed"><li>', preview.text)
    assert _top(client, key, "u0001") == before  # nothing saved yet
    saved_config = re.search(r'name="config" value="([^"]+)"', preview.text).group(1)
    based_on = re.search(r'name="based_on" value="([^"]+)"', preview.text).group(1)
    save = client.post("/console/t/alpha/config", data={"_csrf_token": csrf, "config": html.unescape(saved_config),
                                                        "based_on": based_on}, follow_redirects=False)
    assert save.status_code == 303
    assert _top(client, key, "u0001")[0] == pinned
    page = client.get("/console/t/alpha/config")
    assert "Saved: a new configuration version" in page.text
    newest = re.search(r'/console/t/alpha/config/restore/([^"]+)"', page.text).group(1)
    audit = client.get("/console/t/alpha/audit").text
    assert "console:editor@alpha.test" in audit and "config.set" in audit
    restores = page.text.count("config.restore")

    def restore(undo: bool, page_text: str):
        based = re.search(r'name="based_on" value="([^"]+)"', page_text).group(1)
        return client.post(f"/console/t/alpha/config/restore/{newest}",
                           data={"_csrf_token": csrf, "based_on": based, **({"undo": "1"} if undo else {})})

    restore(True, page.text)  # roll back
    assert _top(client, key, "u0001") == before
    stale = restore(False, page.text)  # from the page as it was before the undo: refused
    assert "changed since this page was shown" in html.unescape(stale.text)
    assert _top(client, key, "u0001") == before
    restore(False, client.get("/console/t/alpha/config").text)  # and forward again, from a fresh page
    assert _top(client, key, "u0001")[0] == pinned
    restored = client.get("/console/t/alpha/config").text
    assert restored.count("config.restore") == restores + 2  # both recorded as versions
    restore(True, restored)


def test_keys_are_created_once_shown_and_revoked_by_an_owner(client):
    assert sign_in(client, "owner@alpha.test").status_code == 303
    csrf = token(client, "/console/t/alpha/keys")
    made = client.post("/console/t/alpha/keys", data={"_csrf_token": csrf, "label": "web shop", "scopes": "read"})
    key = re.search(r"(lsk_[0-9a-f]+_[\w-]+)", made.text).group(1)
    assert client.get("/v1/users/u0001/recommendations", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert key not in client.get("/console/t/alpha/keys").text  # shown once
    key_id = key.split("_")[1]
    client.post(f"/console/t/alpha/keys/{key_id}/revoke", data={"_csrf_token": csrf})
    assert client.get("/v1/users/u0001/recommendations", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert "key.revoke" in client.get("/console/t/alpha/audit").text


def test_pages_answer_for_every_role_they_allow(client):
    assert sign_in(client, "root@ops.test").status_code == 303
    tenants = client.get("/console/tenants")
    assert tenants.status_code == 200 and "/console/t/alpha" in tenants.text and "/console/t/beta" in tenants.text
    for path in ("/console/t/alpha/catalog?q=p0000", "/console/t/alpha/catalog?q=boots&how=meaning",
                 "/console/t/alpha/items/p00001", "/console/t/alpha/users?q=u", "/console/t/alpha/users/u0001",
                 "/console/t/alpha/preview?mode=user&user=u0001", "/console/t/alpha/preview?mode=query&query=boots",
                 "/console/t/alpha/preview?mode=similar&item=p00001", "/console/t/alpha/preview?mode=session&items=p00001",
                 "/console/t/alpha/members", "/console/t/alpha/keys", "/console/t/alpha/audit"):
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[-500:])
    explained = client.get("/console/t/alpha/preview?mode=user&user=u0001").text
    assert "Rank before" in explained and re.search(r"<td>(collab|content|popular)", explained)
    bad = client.get('/console/t/alpha/preview?mode=user&user=u0001&filter={"price":1}')
    assert bad.status_code == 422 and 'aria-invalid="true"' in bad.text


def test_the_operator_key_signs_in_as_an_operator_and_a_wrong_one_does_not(client):
    wrong = client.post("/console/signin", data={"_csrf_token": token(client), "operator_key": "nope"},
                        follow_redirects=False)
    assert wrong.status_code == 401 and "not the operator key" in wrong.text
    right = client.post("/console/signin", data={"_csrf_token": token(client), "operator_key": OPERATOR_KEY},
                        follow_redirects=False)
    assert right.status_code == 303
    page = client.get("/console/tenants")
    assert page.status_code == 200 and "operator key" in page.text
    made = client.post("/console/tenants", data={"_csrf_token": token(client, "/console/tenants"), "name": "gamma"})
    assert made.status_code == 200 and re.search(r"lsk_[0-9a-f]+_", made.text)
    assert "tenant.create" in client.get("/console/tenants").text  # the operators' log


def test_an_owner_adds_a_member_who_signs_in_with_the_password_shown_once_and_is_removed(client):
    assert sign_in(client, "owner@alpha.test").status_code == 303
    csrf = token(client, "/console/t/alpha/members")
    added = client.post("/console/t/alpha/members", data={"_csrf_token": csrf, "email": "New@Alpha.test", "role": "viewer"})
    password = re.search(r"its password, shown once \(send it safely\): <code class=\"secret\" data-secret>([^<]+)<",
                         added.text).group(1)
    assert "new@alpha.test" in added.text and "viewer" in added.text
    assert password not in client.get("/console/t/alpha/members").text
    with TestClient(app=client.app) as other:
        assert sign_in(other, "new@alpha.test", password).status_code == 303
        assert other.get("/console/t/alpha").status_code == 200
        client.post("/console/t/alpha/members/remove", data={"_csrf_token": csrf, "email": "new@alpha.test"})
        assert other.get("/console/t/alpha").status_code == 403  # from the next request on
    audit = client.get("/console/t/alpha/audit").text
    assert "member.add" in audit and "member.remove" in audit


def test_erasure_asks_for_confirmation_and_is_audited(client, console_settings):
    assert sign_in(client, "owner@alpha.test").status_code == 303
    page = client.get("/console/t/alpha/users/u0002/erase")
    csrf = TOKEN.search(page.text).group(1)
    refused = client.post("/console/t/alpha/users/u0002/erase", data={"_csrf_token": csrf, "confirm": "u0003"})
    assert refused.status_code == 422 and "type the user" in html.unescape(refused.text)
    store = open_cdp(console_settings)
    try:
        assert store.user_events("alpha", "u0002")
        done = client.post("/console/t/alpha/users/u0002/erase", data={"_csrf_token": csrf, "confirm": "u0002"})
        assert done.status_code == 200 and "Erased user u0002" in done.text
        assert store.user_events("alpha", "u0002") == []
    finally:
        store.close()
    assert "user.erase" in client.get("/console/t/alpha/audit").text


def test_the_overview_charts_the_pipelines_reports_and_keys_show_when_last_used(client, env):
    assert sign_in(client, "owner@alpha.test").status_code == 303
    overview = client.get("/console/t/alpha").text
    assert '<svg viewBox="0 0 640 200" role="img" aria-label="Events per day, by type' in overview
    # Each published version is charted; with too few held-out users (alpha has 24), the page says so.
    assert re.search(r'aria-label="NDCG@10 of each published version|\d+ version\(s\) published, none evaluated',
                     overview)
    client.get("/v1/users/u0001/recommendations", headers={"Authorization": f"Bearer {env.keys['alpha']}"})
    client.app.state.key_usage.flush()
    keys = client.get("/console/t/alpha/keys").text
    assert re.search(r"<td>\d+ s ago</td>", keys)


def test_the_evaluation_chart_plots_each_published_versions_ndcg_next_to_popularity():
    from serving.console.tenant import _evaluation_chart

    day = 1_793_491_200  # 2026-11-01 00:00 UTC
    entries = [{"at": day + n * 86400 + 3600, "after": {"version": f"v{n}", "ndcg@10": 0.1 + n / 100,
                                                       "popularity_ndcg@10": 0.05}}
               for n in (3, 2, 1)]  # newest first, as the audit log reads
    chart = _evaluation_chart(entries)
    assert chart.count("<circle") == 6 and chart.count("<polyline") == 2
    rows = re.findall(r"<tr><th scope=row>([^<]+)</th><td>([^<]+)</td><td>([^<]+)</td>", chart)
    assert rows == [("11-02 01:00", "0.11", "0.05"), ("11-03 01:00", "0.12", "0.05"), ("11-04 01:00", "0.13", "0.05")]


def test_signing_in_starts_a_new_session_id_so_a_planted_one_never_signs_in(client):
    planted = "ab" * 32
    client.cookies.set("lodestar_console", planted, path="/console")
    signed = sign_in(client, "owner@alpha.test")
    fresh = signed.cookies.get("lodestar_console")
    assert fresh and fresh != planted
    with TestClient(app=client.app) as attacker:
        attacker.cookies.set("lodestar_console", planted, path="/console")
        assert attacker.get("/console/t/alpha", follow_redirects=False).status_code == 303  # to the sign-in page


def test_a_tenant_with_quotas_changes_its_configuration_and_keeps_them(client, console_settings):
    store = open_cdp(console_settings)
    try:
        record = store.get_tenant("beta")
        store.set_tenant_config("beta", {**record["config"], "quotas": {"items": 100000}})
    finally:
        store.close()
    assert sign_in(client, "owner@beta.test").status_code == 303
    csrf = token(client, "/console/t/beta/config")
    preview = client.post("/console/t/beta/config/preview", data={"_csrf_token": csrf, "ranking.content": "0.3"})
    assert preview.status_code == 200 and "Lists that change" in preview.text
    proposed = html.unescape(re.search(r'name="config" value="([^"]+)"', preview.text).group(1))
    assert "quotas" not in proposed
    based_on = re.search(r'name="based_on" value="([^"]+)"', preview.text).group(1)
    client.post("/console/t/beta/config", data={"_csrf_token": csrf, "config": proposed, "based_on": based_on})
    store = open_cdp(console_settings)
    try:
        stored = store.get_tenant("beta")["config"]
    finally:
        store.close()
    assert stored["ranking"] == {"content": 0.3} and stored["quotas"] == {"items": 100000}


def test_an_error_inside_a_rules_filter_is_shown_at_that_filter(client):
    assert sign_in(client, "editor@alpha.test").status_code == 303
    csrf = token(client, "/console/t/alpha/config")
    answer = client.post("/console/t/alpha/config/preview", data={
        "_csrf_token": csrf, "rules.0.type": "boost", "rules.0.amount": "0.2",
        "rules.0.filter": '{"attributes": {"price": {"gte": "cheap"}}}'})
    assert answer.status_code == 422
    assert re.search(r'id="rules.0.filter-error">[^<]*must be a number', answer.text)


def test_an_anonymous_visit_stores_no_session(client, console_settings):
    sessions = console_settings.data_dir / "console" / "sessions"
    before = set(sessions.iterdir())
    for _ in range(3):
        assert client.get("/console/signin").status_code == 200
        client.cookies.clear()
    assert set(sessions.iterdir()) == before
    assert oct(sessions.stat().st_mode & 0o777) == "0o700"
    assert client.get("/console/signin").headers["cache-control"] == "no-store"


def test_an_editor_starts_stops_and_reads_experiments_in_the_console(client, env):
    assert sign_in(client, "editor@alpha.test").status_code == 303
    page = client.get("/console/t/alpha/experiments")
    assert page.status_code == 200 and "boost-sale" in page.text  # the example definition to start from
    csrf = TOKEN.search(page.text).group(1)
    bad = client.post("/console/t/alpha/experiments", data={"_csrf_token": csrf, "definition": '{"name": "x"'})
    assert bad.status_code == 422 and 'id="definition-error"' in bad.text and "not valid JSON" in bad.text
    invalid = client.post("/console/t/alpha/experiments", data={"_csrf_token": csrf, "definition": json.dumps(
        {"name": "x", "variants": [{"name": "control"}, {"name": "b", "overlay": {"ranking": {"collab": -1}}}]})})
    assert invalid.status_code == 422 and "variants[1].overlay.ranking.collab" in invalid.text
    made = client.post("/console/t/alpha/experiments", data={"_csrf_token": csrf, "definition": json.dumps(
        {"name": "console-exp", "variants": [{"name": "control"}, {"name": "more-content",
                                                                   "overlay": {"ranking": {"content": 0.5}}}]})})
    assert made.status_code == 200 and "Experiment console-exp runs from now" in made.text
    client.app.state.experiments._running.clear()  # read again now (a serving process does within a second)
    served = client.get("/v1/users/u0001/recommendations", headers={"Authorization": f"Bearer {env.keys['alpha']}"})
    assert served.json()["experiment"] == "console-exp"
    ramp = client.post("/console/t/alpha/experiments/console-exp/traffic", data={"_csrf_token": csrf, "traffic": "50"})
    assert "console-exp now takes 50% of units" in ramp.text
    bad = client.post("/console/t/alpha/experiments/console-exp/traffic", data={"_csrf_token": csrf, "traffic": "x"})
    assert "a percentage from 1 to 100" in bad.text
    stopped = client.post("/console/t/alpha/experiments/console-exp/stop", data={"_csrf_token": csrf})
    assert "Stopped console-exp" in stopped.text
    assert "experiment.stop" in client.get("/console/t/alpha/audit").text


def test_the_experiments_page_shows_a_report_with_undefined_lifts(client, console_settings):
    from lodestar.cdp import open_cdp as cdp_of

    store = cdp_of(console_settings)
    try:
        store.put_report("beta", "experiments", [{
            "experiment": "e", "status": "running", "primary_metric": "ctr", "guardrails": ["revenue_per_user"],
            "placements": ["recommendations"], "days": 1.0, "horizon": {"reached": True, "at": 1.0, "min_days": 0,
                                                                         "units": {"a": 2, "b": 2}},
            "alpha": 0.05, "alpha_per_comparison": 0.05, "interval_level": 0.95, "srm": {"p_value": 0.5, "broken": False},
            "verdict": "no significant difference in ctr",
            "variants": [{"name": "a", "weight": 0.5, "units": 2, "units_needed": 2, "lists": 2, "impressions": 20,
                          "clicks": 1, "conversions": 0, "revenue": 0, "metrics": {"ctr": {"mean": 0.05},
                                                                                    "revenue_per_user": {"mean": 0.0}}},
                         {"name": "b", "weight": 0.5, "units": 2, "units_needed": 2, "lists": 2, "impressions": 20,
                          "clicks": 2, "conversions": 1, "revenue": 5, "metrics": {
                              "ctr": {"mean": 0.1, "lift": 1.0, "lift_low": None, "lift_high": None, "p_value": 0.4,
                                      "significant": False},
                              "revenue_per_user": {"mean": 2.5, "lift": None, "lift_low": None, "lift_high": None,
                                                   "p_value": 0.4, "significant": False}}}]}])
        store.create_experiment("beta", {"name": "e", "hypothesis": "", "placements": ["recommendations"],
                                         "layer": "default", "traffic": 1.0, "variants": [
                                             {"name": "a", "weight": 0.5, "overlay": {}},
                                             {"name": "b", "weight": 0.5, "overlay": {}}],
                                         "start": 0.0, "end": None, "primary_metric": "ctr",
                                         "guardrails": ["revenue_per_user"], "mde": 0.1, "alpha": 0.05, "power": 0.8,
                                         "min_days": 0, "baseline": None, "status": "stopped", "stopped_at": 1.0,
                                         "promoted": None, "plan": {"baseline": {"mean": 0.05, "sd": 0.1,
                                                                                 "source": "given"}, "mde": 0.1,
                                                                    "units": {"a": 2, "b": 2}, "days_estimate": None}})
    finally:
        store.close()
    assert sign_in(client, "owner@beta.test").status_code == 303
    page = client.get("/console/t/beta/experiments")
    assert page.status_code == 200 and "[unbounded]" in page.text and "no lift (control 0)" in page.text
