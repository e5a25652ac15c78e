"""Embedding throughput and agreement per backend on the demo catalogs (issue 12, goal 3).

    .venv/bin/python bench/embedding.py [--rounds 3] [--backends torch,onnx,onnx-int8]

Every backend encodes the same texts: the items of the demo shop (2,400) and news site (1,200),
written as the pipeline writes them (``lodestar.features.item_text``), with the Embedder's batch
size and no vector cache. Rounds alternate the backends, so that other work on a shared machine
falls on each of them; texts/s is a backend's best round, and the baseline is torch (the default
backend before onnx-int8) in the same run. Agreement with torch, per catalog (a tenant's index holds its own items):
for each item, the share of its 10 nearest neighbours by cosine that torch's vectors also put in
its 10 nearest; the mean over the items of both catalogs is the issue's figure (goal >= 0.95).

ONNX exports are kept in the models dir (``LODESTAR_MODELS_DIR``, default
``~/.cache/lodestar/models``, as the pipeline and the API keep them): the first run exports them
(seconds, shown as the load time), later runs load them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lodestar import demo
from lodestar.embed import BATCH_SIZE, EMBED_BACKENDS, load_encoder
from lodestar.features import item_text
from lodestar.settings import Settings

NEIGHBOURS = 10


def catalog_texts() -> dict[str, list[str]]:
    """Demo tenant -> its items' texts, in item order."""
    return {
        tenant: [item_text(i["title"], i["description"], i["categories"], i["tags"], i["attributes"])
                 for i in generate()["items"]]
        for tenant, generate in demo.GENERATORS.items()
    }


def nearest(vectors: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Each row's k nearest other rows by cosine (the vectors are unit length)."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return np.argpartition(-scores, k, axis=1)[:, :k]


def overlap(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per row, the share of its nearest neighbours under ``vectors`` that are nearest under ``reference``."""
    return np.array([len(set(a) & set(b)) / NEIGHBOURS
                     for a, b in zip(nearest(vectors), nearest(reference), strict=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default=",".join(EMBED_BACKENDS), help="comma-separated; torch always runs")
    args = parser.parse_args()
    settings = Settings.from_env()
    backends = ["torch", *(b for b in args.backends.split(",") if b and b != "torch")]
    catalogs = catalog_texts()
    texts = [t for tenant_texts in catalogs.values() for t in tenant_texts]
    batch_size = BATCH_SIZE

    encoders, load_s = {}, {}
    for backend in backends:
        started = time.perf_counter()
        encoders[backend] = load_encoder(settings.embed_model, backend, settings.models_dir)
        encoders[backend].encode(texts[:batch_size], batch_size=batch_size, normalize_embeddings=True)  # warm up
        load_s[backend] = time.perf_counter() - started

    rates: dict[str, list[float]] = {b: [] for b in backends}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for backend in backends:
            started = time.perf_counter()
            encoded = encoders[backend].encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                               show_progress_bar=False)
            rates[backend].append(len(texts) / (time.perf_counter() - started))
            vectors.setdefault(backend, np.asarray(encoded, dtype=np.float32))

    sizes = {tenant: len(t) for tenant, t in catalogs.items()}
    print(f"model {settings.embed_model}; {len(texts)} texts ({', '.join(f'{t} {n}' for t, n in sizes.items())}), "
          f"mean {np.mean([len(t) for t in texts]):.0f} characters; batch {batch_size}; "
          f"best of {args.rounds} rounds")
    print(f"{'backend':<10} {'load s':>7} {'texts/s':>8} {'/ torch':>8} {'rounds':>14}   "
          f"cosine to torch (min, mean)   top-{NEIGHBOURS} overlap with torch")
    base = max(rates["torch"])
    for backend in backends:
        line = (f"{backend:<10} {load_s[backend]:>7.1f} {max(rates[backend]):>8.0f} {max(rates[backend]) / base:>8.2f} "
                f"{'/'.join(f'{r:.0f}' for r in rates[backend]):>14}")
        if backend != "torch":
            cosine = np.sum(vectors[backend] * vectors["torch"], axis=1)
            shares, start = {}, 0
            for tenant, n in sizes.items():
                shares[tenant] = overlap(vectors[backend][start:start + n], vectors["torch"][start:start + n])
                start += n
            every = np.concatenate(list(shares.values()))
            per_tenant = ", ".join(f"{t} {s.mean():.3f}" for t, s in shares.items())
            line += f"   {cosine.min():.4f}, {cosine.mean():.4f}            {every.mean():.3f} ({per_tenant})"
        print(line)


if __name__ == "__main__":
    main()
