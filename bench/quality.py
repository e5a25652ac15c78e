"""Recommendation quality on MovieLens: Lodestar end to end vs the strongest simple baselines.

    .venv/bin/python bench/quality.py [DIR]      (default: ../shared/data/movielens-small)

Protocol (issue 3): every rating is an implicit interaction; per user, the last 20% of their
interactions by timestamp (ceil) are the test set; items seen in training are excluded; metrics are
averaged over users with a test set. The baselines run in this process on the training split;
Lodestar runs end to end: the training split is imported with `lodestar cdp import` (canonical
JSONL), materialized through Dagster, served by `lodestar serve`, and every test user is asked for
over HTTP (`GET /v1/users/{id}/recommendations?k=20`). One table, ratios to EASE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import start_server, stop  # noqa: E402
from lodestar.evaluation import Metrics, evaluate, temporal_split  # noqa: E402
from lodestar.lineage.embeddings import read_embeddings  # noqa: E402
from lodestar.lineage.files import TenantFiles  # noqa: E402

CLI = [sys.executable, "-m", "lodestar.cli"]


def load(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = pd.read_csv(directory / "movies.csv", dtype=str)
    ratings = pd.read_csv(directory / "ratings.csv", dtype={"userId": str, "movieId": str})
    ratings = ratings[ratings["movieId"].isin(set(movies["movieId"]))]  # a rating of an unknown movie is an error
    events = pd.DataFrame({"user_id": ratings["userId"], "item_id": ratings["movieId"], "type": "rating",
                           "value": ratings["rating"].astype(float), "ts": ratings["timestamp"].astype(float)})
    return movies, events


def top_k(scores: np.ndarray, seen: np.ndarray, k: int = 20) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel().copy()
    scores[seen] = -np.inf
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def baselines(train: pd.DataFrame, test: dict[str, list[str]], items: list[str],
              content: np.ndarray | None) -> dict[str, Metrics]:
    from lodestar.collab import gram_matrix

    index = {i: k for k, i in enumerate(items)}
    users = sorted(test)
    uidx = {u: k for k, u in enumerate(sorted(set(train["user_id"]) | set(users)))}
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train["user_id"].map(uidx), train["item_id"].map(index))),
                      shape=(len(uidx), len(items)))
    X.data[:] = 1.0
    rows = [uidx[u] for u in users]
    Xt = X[rows].toarray()  # the test users' training interactions, dense: one BLAS product per model
    results: dict[str, Metrics] = {}

    def run(name: str, scores: np.ndarray, started: float) -> None:
        recs = {u: [items[i] for i in top_k(scores[n], X[uidx[u]].indices)] for n, u in enumerate(users)}
        results[name] = evaluate(test, lambda u: recs[u], len(items))
        print(f"  {name}: {time.perf_counter() - started:.1f}s", flush=True)

    started = time.perf_counter()
    popularity = np.asarray(X.sum(axis=0)).ravel()
    run("most popular", np.tile(popularity, (len(users), 1)), started)

    started = time.perf_counter()
    gram = gram_matrix(X)
    norms = np.sqrt(np.diag(gram)) + 1e-9
    cosine = gram / norms[:, None] / norms[None, :]
    np.fill_diagonal(cosine, 0.0)
    run("item-kNN (cosine)", Xt @ cosine, started)

    started = time.perf_counter()
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    als = AlternatingLeastSquares(factors=64, iterations=15, regularization=0.01, random_state=0)
    with threadpool_limits(1, "blas"):  # implicit runs its own threads
        als.fit(X, show_progress=False)
    run("iALS (implicit, 64 factors)", als.user_factors[rows] @ als.item_factors.T, started)

    started = time.perf_counter()
    gram[np.diag_indices_from(gram)] += 200.0
    inverse = np.linalg.inv(gram)
    B = -inverse / np.diag(inverse)
    np.fill_diagonal(B, 0.0)
    run("EASE (lambda 200)", Xt @ B, started)

    if content is not None:
        started = time.perf_counter()
        counts = np.maximum(Xt.sum(axis=1, keepdims=True), 1.0)
        run("content only (mean of MiniLM item vectors)", ((Xt @ content) / counts) @ content.T, started)
    return results


def lodestar_end_to_end(movies: pd.DataFrame, train: pd.DataFrame, test: dict[str, list[str]], work: Path,
                        n_items: int) -> tuple[Metrics, Path]:
    env = dict(os.environ, LODESTAR_DATA_DIR=str(work / "var"), DAGSTER_HOME=str(work / "dagster_home"))
    (work / "dagster_home").mkdir()
    (work / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    items_file, events_file = work / "items.jsonl", work / "events.jsonl"
    with items_file.open("w") as fh:
        for row in movies.itertuples():
            genres = [g for g in str(row.genres).split("|") if g and g != "(no genres listed)"]
            fh.write(json.dumps({"id": row.movieId, "kind": "content", "title": row.title, "categories": genres}) + "\n")
    train[["user_id", "item_id", "type", "value", "ts"]].to_json(events_file, orient="records", lines=True)

    def cli(*args: str) -> str:
        out = subprocess.run(CLI + list(args), env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"lodestar {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    key = json.loads(cli("tenants", "create", "movielens", "--json"))["api_key"]
    started = time.perf_counter()
    cli("cdp", "import", "--tenant", "movielens", "--items", str(items_file), "--events", str(events_file))
    print(f"  import: {time.perf_counter() - started:.1f}s", flush=True)
    started = time.perf_counter()
    for line in cli("materialize", "--tenant", "movielens").splitlines():
        if "offline_evaluation" in line or "collab_model" in line:
            print(f"  {line.strip()}")
    print(f"  materialize: {time.perf_counter() - started:.1f}s", flush=True)

    server, http = start_server(env, headers={"Authorization": f"Bearer {key}"})
    try:
        started = time.perf_counter()
        recs, strategies = {}, {}
        for user in test:
            body = http.get(f"/v1/users/{user}/recommendations", params={"k": 20}).json()
            recs[user] = [i["id"] for i in body["items"]]
            strategies[body["strategy"]] = strategies.get(body["strategy"], 0) + 1
        elapsed = time.perf_counter() - started
        print(f"  {len(test)} API requests: {elapsed:.1f}s ({1000 * elapsed / len(test):.1f} ms each), "
              f"strategies {strategies}", flush=True)
    finally:
        stop(server)
    return evaluate(test, lambda u: recs[u], n_items), Path(env["LODESTAR_DATA_DIR"]) / "tenants" / "movielens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", default=str(ROOT.parent / "shared" / "data" / "movielens-small"))
    args = parser.parse_args()
    movies, events = load(Path(args.directory))
    split = temporal_split(events, 0.2)
    items = sorted(movies["movieId"])
    print(f"{len(events)} interactions, {len(split.test)} test users, {len(items)} items", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("Lodestar end to end (import, materialize, serve, HTTP):", flush=True)
        ours, tenant_dir = lodestar_end_to_end(movies, split.train, split.test, Path(tmp), len(items))
        ids, vectors = read_embeddings(TenantFiles(tenant_dir))
        content = np.zeros((len(items), vectors.shape[1]), dtype=np.float32)
        position = {i: k for k, i in enumerate(items)}
        for item_id, vector in zip(ids, vectors, strict=True):
            content[position[item_id]] = vector
        print("Baselines on the same split, in this process:", flush=True)
        results = baselines(split.train, split.test, items, content)
    results["Lodestar (served over HTTP)"] = ours
    ease = results["EASE (lambda 200)"].ndcg10
    print()
    print("| model (same split) | NDCG@10 | Recall@20 | NDCG@10 / EASE |")
    print("|---|---|---|---|")
    for name, m in results.items():
        print(f"| {name} | {m.ndcg10:.4f} | {m.recall20:.4f} | {m.ndcg10 / ease:.3f} |")


if __name__ == "__main__":
    main()
