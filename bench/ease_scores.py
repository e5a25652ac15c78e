"""EASE scores of a request's candidates: the served way against the two ways it replaced.

    .venv/bin/python bench/ease_scores.py [DIR] [--model MODEL_DIR] [--repeats 30]

The collaborative model is fitted on MovieLens (DIR defaults to ../shared/data/movielens-small:
9,742 items, so B is a 380 MB float32 matrix), or loaded from MODEL_DIR (a tenant's
``model/<version>`` directory). For users of 20 to 2,700 items of history (random items, random
weights) and 310 candidates (a recommendation's 300 collaborative and 10 content candidates), each
call is timed with the processor's caches flushed first, as a request finds B's rows, medians of
``--repeats``:

  * "served": :meth:`CollabModel._ease_scores` (the user's rows times their weights then the
    candidates' columns of the result, or, for a history longer than the candidates, each
    candidate's row dotted in place with the weights spread over the catalog);
  * "gather columns": the candidates' columns of the user's rows gathered, then weighted (the
    light users' way until 2026-11-23);
  * "copy candidate rows": the candidates' rows copied, the user's columns gathered out of them,
    rescaled by diag(P) (the heavy users' way until then).

Each baseline's ratio is served / baseline (< 1: served is faster). Every way's scores are checked
against the served ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lodestar.collab import CollabModel, fit, positive_interactions  # noqa: E402
from lodestar.tenant_config import TenantConfig  # noqa: E402

HISTORIES = (20, 50, 200, 310, 500, 1000, 2700)
CANDIDATES = 310


def gather_columns(model: CollabModel, idx: np.ndarray, w: np.ndarray, cand: np.ndarray) -> np.ndarray:
    return w @ np.asarray(model.ease[idx])[:, cand]


def copy_candidate_rows(model: CollabModel, idx: np.ndarray, w: np.ndarray, cand: np.ndarray) -> np.ndarray:
    order = np.argsort(cand, kind="stable")
    rows = np.asarray(model.ease[cand[order]])[:, idx]
    d = model.ease_diag
    scores = np.empty(len(cand), dtype=np.float64)
    scores[order] = (rows @ (w * d[idx])) / d[cand[order]]
    return scores.astype(np.float32)


def movielens_model(directory: Path) -> CollabModel:
    ratings = pd.read_csv(directory / "ratings.csv")
    events = pd.DataFrame({"user_id": ratings["userId"].astype(str), "item_id": ratings["movieId"].astype(str),
                           "type": "rating", "value": ratings["rating"]})
    config = TenantConfig()
    items = sorted(pd.read_csv(directory / "movies.csv")["movieId"].astype(str))
    return fit(positive_interactions(events, config.event_weights), items, config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", default=str(ROOT.parent / "shared" / "data" / "movielens-small"))
    parser.add_argument("--model", help="a saved model directory (skips the fit)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    started = time.perf_counter()
    model = CollabModel.load(Path(args.model)) if args.model else movielens_model(Path(args.directory))
    if model.ease is None or model.ease_diag is None:
        raise SystemExit("the model is not an EASE model with diag(P): fit one (leave --model out)")
    n = len(model.item_ids)
    print(f"EASE over {n:,} items ({model.ease.nbytes / 2**20:.0f} MB), ready in {time.perf_counter() - started:.0f}s")
    np.asarray(model.ease).sum()  # B in the page cache: what a serving process finds
    flush = np.ones(64 * 2**20 // 8)  # larger than the processor's caches
    rng = np.random.default_rng(0)
    ways = {"served": model._ease_scores, "gather columns": lambda *a: gather_columns(model, *a),
            "copy candidate rows": lambda *a: copy_candidate_rows(model, *a)}
    print("| items of history | served ms | gather columns ms | ratio | copy candidate rows ms | ratio |")
    print("|---|---|---|---|---|---|")
    for history in HISTORIES:
        if history >= n:
            continue
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            idx = np.sort(rng.choice(n, history, replace=False))
            w = rng.uniform(0.1, 2.0, history).astype(np.float32)
            cand = rng.choice(n, CANDIDATES, replace=False)
            answers = {}
            for name, way in ways.items():
                flush.sum()
                t = time.perf_counter()
                answers[name] = way(idx, w, cand)
                times[name].append(time.perf_counter() - t)
            for name, scores in answers.items():
                if not np.allclose(scores, answers["served"], rtol=1e-3, atol=1e-5):
                    raise SystemExit(f"{name} disagrees with served at {history} items of history")
        ms = {name: float(np.median(t)) * 1000 for name, t in times.items()}
        print(f"| {history:,} | {ms['served']:.2f} | {ms['gather columns']:.2f} | "
              f"{ms['served'] / ms['gather columns']:.2f} | {ms['copy candidate rows']:.2f} | "
              f"{ms['served'] / ms['copy candidate rows']:.2f} |")


if __name__ == "__main__":
    main()
