"""The spend ledger under concurrency: several processes (as several ``lodestar serve`` workers
would be), each with threads, charging clicks of one line item against a small budget, every click
sent twice. Total spend stays within the budget plus one click's price, and no click is charged
twice."""

from __future__ import annotations

import multiprocessing
import random
from concurrent.futures import ThreadPoolExecutor

from lodestar.cdp.sqlite import SqliteCdpStore

BUDGET = 50_000  # micros: five cents
MAX_PRICE = 9_000


def _charge_many(path: str, worker: int) -> list[tuple[str, bool]]:
    store = SqliteCdpStore(path)
    rng = random.Random(worker)
    clicks = [(f"ad-{n}", rng.randint(1_000, MAX_PRICE)) for n in range(60)]  # the same ad ids in every worker

    def charge(click: tuple[str, int]) -> tuple[str, bool]:
        ad_id, price = click
        result = store.charge_click("shop", {"ad_id": ad_id, "line_item": "li", "advertiser": "adv", "price": price,
                                             "product": "p", "user_id": ad_id, "day": "2026-11-22", "ts": 1.0}, daily_budget=BUDGET, total_budget=BUDGET)
        return ad_id, result["charged"]

    try:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(charge, clicks + clicks))
    finally:
        store.close()


def test_concurrent_clicks_never_overspend_beyond_one_click_and_are_charged_once(tmp_path):
    path = tmp_path / "cdp.sqlite"
    store = SqliteCdpStore(path)
    store.create_tenant("shop")
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_charge_many, [(str(path), 0), (str(path), 1)])
    charges = store.ad_charges("shop")
    store.close()
    charged = [ad for worker in results for ad, ok in worker if ok]
    assert len(charged) == len(set(charged)) == len(charges) > 0  # each ad id at most once, across processes
    spent = sum(c["price"] for c in charges)
    assert BUDGET <= spent <= BUDGET + MAX_PRICE  # the budget was reached, and passed by at most one click
    assert SqliteCdpStore(path).ad_spend("shop", "li", "2026-11-22")["spent_total"] == spent
