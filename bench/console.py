"""How fast the console's pages answer, on the demo tenants, next to the server's HTTP floor.

    .venv/bin/python bench/console.py [--data-dir var] [--rounds 20] [--screenshots docs/console]

Serves a data dir holding the demo tenants (``make demo`` makes ``var``; without ``--data-dir`` the
demo is generated and materialized through Dagster into a temporary one), signs in as an operator
made for the run, and requests every console page of the shop tenant ``--rounds`` times over one
kept-alive connection, after one request each to warm up (the first pipeline question starts the
console's Dagster helper process, a few seconds, once per server). ``GET /health`` is measured in
turn on the same connection as the baseline: the HTTP floor of the same server. Times are measured
at the client over loopback, so they include HTTP; the goal is under 300 ms per page (p95).

With ``--screenshots DIR``, Chromium (Playwright driving the system binary) saves each page at
1280 px and at phone width (375 px) as PNG files for the README.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import start_server, stop  # noqa: E402
from lodestar.accounts import ensure_account  # noqa: E402
from lodestar.cdp import ALL_SCOPES, open_cdp  # noqa: E402
from lodestar.keys import create_key  # noqa: E402
from lodestar.settings import Settings  # noqa: E402

TENANT = "shop"
PAGES = {
    "tenants": "/console/tenants",
    "overview": f"/console/t/{TENANT}",
    "catalog (title)": f"/console/t/{TENANT}/catalog?q=jacket",
    "catalog (meaning)": f"/console/t/{TENANT}/catalog?q=warm+waterproof+jacket&how=meaning",
    "item": f"/console/t/{TENANT}/items/p00001",
    "users": f"/console/t/{TENANT}/users?q=u00",
    "user": f"/console/t/{TENANT}/users/u0001",
    "preview (user, explained)": f"/console/t/{TENANT}/preview?mode=user&user=u0001",
    "preview (search, explained)": f"/console/t/{TENANT}/preview?mode=query&query=hiking+boots",
    "configuration": f"/console/t/{TENANT}/config",
    "experiments": f"/console/t/{TENANT}/experiments",
    "pipeline": f"/console/t/{TENANT}/pipeline",
    "keys": f"/console/t/{TENANT}/keys",
    "members": f"/console/t/{TENANT}/members",
    "audit": f"/console/t/{TENANT}/audit",
    "retail media": f"/console/t/{TENANT}/ads",
    "alerts": f"/console/t/{TENANT}/alerts",
}
EMAIL, PASSWORD = "bench@console.bench", "bench password for the console"
TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def demo_data_dir(tmp: Path) -> Path:
    data = tmp / "var"
    env = {**os.environ, "LODESTAR_DATA_DIR": str(data)}
    subprocess.run([sys.executable, "-m", "lodestar.cli", "demo", "--no-serve"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return data


def traffic(client, data: Path, key: str) -> None:
    """Some served lists and clicks and purchases on them, then a materialization: the overview's
    served-list charts then have something to show (for the screenshots)."""
    import random

    rng = random.Random(7)
    auth = {"Authorization": f"Bearer {key}"}
    experiment = {"name": "boost-sale", "hypothesis": "Boosting sale items raises CTR", "min_days": 0,
                  "baseline": {"mean": 0.08, "sd": 0.09}, "mde": 0.5, "variants": [
                      {"name": "control"}, {"name": "boost", "overlay": {"rules": [
                          {"type": "boost", "filter": {"tags": ["sale"]}, "amount": 0.3}]}}]}
    made = client.post("/v1/experiments", json=experiment, headers=auth)
    assert made.status_code in (201, 409), made.text  # 409: made by an earlier run on this data dir
    time.sleep(1.1)  # serving processes see a new experiment within a second
    events = []
    for n in range(1, 201):
        user = f"u{n:04d}"
        served = client.get(f"/v1/users/{user}/recommendations?k=10", headers=auth).json()
        for item in served["items"]:
            if rng.random() < (0.1 if served.get("variant") == "boost" else 0.08):
                kind = "purchase" if rng.random() < 0.2 else "click"
                events.append({"user_id": user, "item_id": item["id"], "type": kind,
                               "recommendation_id": served["recommendation_id"]})
    for start in range(0, len(events), 500):
        client.post("/v1/events", json={"events": events[start:start + 500]}, headers=auth)
    time.sleep(1)  # the served log is written every half second
    # The reports for the pages; a blocked publish (the offline gate judging this made-up traffic)
    # leaves them made all the same.
    subprocess.run([sys.executable, "-m", "lodestar.cli", "materialize", "--tenant", TENANT], check=False,
                   env={**os.environ, "LODESTAR_DATA_DIR": str(data)}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def screenshots(base: str, folder: Path) -> None:
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    binary = os.environ.get("LODESTAR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        for width, suffix in ((1280, ""), (375, "-phone")):
            page = browser.new_context(viewport={"width": width, "height": 900}).new_page()
            page.goto(f"{base}/console/signin")
            page.screenshot(path=folder / f"signin{suffix}.png", full_page=True)
            page.fill("#email", EMAIL)
            page.fill("#password", PASSWORD)
            with page.expect_navigation():
                page.click("button[type=submit]")
            shots = dict(PAGES)
            for name, path in shots.items():
                if suffix and name not in ("overview", "preview (user, explained)", "configuration", "experiments",
                                           "retail media"):
                    continue
                page.goto(base + path)
                page.screenshot(path=folder / f"{re.sub(r'[^a-z]+', '-', name).strip('-')}{suffix}.png", full_page=True)
            if not suffix:  # the configuration's preview of a change, before saving it
                page.goto(f"{base}/console/t/{TENANT}/config")
                page.select_option("select[name='rules.0.type']", "boost")
                page.fill("input[name='rules.0.filter']", '{"tags": ["sale"]}')
                page.fill("input[name='rules.0.amount']", "0.3")
                page.fill("#preview_user", "u0001")
                page.click("text=Preview the change")
                page.screenshot(path=folder / "configuration-preview.png", full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a data dir with the demo tenants (default: make one)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--screenshots", type=Path, metavar="DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data_dir.resolve() if args.data_dir else demo_data_dir(Path(tmp))
        store = open_cdp(Settings(data_dir=data))
        try:
            ensure_account(store, EMAIL, PASSWORD, "bench", operator=True)
            key = create_key(store, TENANT, ALL_SCOPES, "bench", "bench")
        finally:
            store.close()
        process, client = start_server({**os.environ, "LODESTAR_DATA_DIR": str(data)})
        try:
            page = client.get("/console/signin")
            signed = client.post("/console/signin", data={"_csrf_token": TOKEN.search(page.text).group(1),
                                                         "email": EMAIL, "password": PASSWORD}, follow_redirects=True)
            assert signed.status_code == 200 and "/signin" not in str(signed.url), "the bench account could not sign in"
            times: dict[str, list[float]] = {name: [] for name in ["/health (baseline)", *PAGES]}
            for path in PAGES.values():
                assert client.get(path).status_code == 200, path  # warm-up
            for _ in range(args.rounds):
                for name, path in [("/health (baseline)", "/health"), *PAGES.items()]:
                    started = time.perf_counter()
                    answer = client.get(path)
                    times[name].append(time.perf_counter() - started)
                    assert answer.status_code == 200, (path, answer.status_code)
            if args.screenshots:
                traffic(client, data, key)
                screenshots(str(client.base_url).rstrip("/"), args.screenshots)
        finally:
            stop(process)
    floor = ms(times["/health (baseline)"], 50)
    print(f"console pages of tenant {TENANT!r}, {args.rounds} rounds, one kept-alive connection, loopback")
    print(f"{'page':<30} {'p50 ms':>8} {'p95 ms':>8} {'p50 / health p50':>17}  goal p95 < 300 ms")
    slow = []
    for name, values in times.items():
        p50, p95 = ms(values, 50), ms(values, 95)
        verdict = "" if name.startswith("/health") else ("ok" if p95 < 300 else "SLOW")
        if verdict == "SLOW":
            slow.append(name)
        print(f"{name:<30} {p50:>8.1f} {p95:>8.1f} {p50 / floor:>17.1f}  {verdict}")
    print(f"pages over 300 ms at p95: {', '.join(slow) or 'none'}")


if __name__ == "__main__":
    main()
