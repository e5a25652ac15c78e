"""The collaborative model of a tenant: item-to-item EASE for catalogs up to ``ease_max_items``,
low-rank PureSVD factors above that, and item factors for candidate retrieval in either case.

Both are fitted on which items each user engaged with positively (net positive event weight):
EASE's closed form ``B = -P / diag(P)``, ``P = (XᵀX + λI)⁻¹``, is a dense item×item matrix, so it is
only used up to ``ease_max_items`` (default 12,000 items: a 576 MB float32 matrix, about a minute
to invert on 2 cores); above it the model is the rank-``factors`` SVD of the popularity-damped
matrix, whose item factors scale to catalogs of 100k items and more.

A user is scored at request time from their events, so a new event counts at once: each event
weighs its type's weight (a dislike is negative) times a recency weight
``0.5 ** (position from the latest / half_life) + floor``; the user's vector is the sum over items.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lodestar.event_weights import RATING, RATING_SCALE, event_weights

if TYPE_CHECKING:
    from collections.abc import Callable

    import scipy.sparse as sp  # imported by the fit itself: serving processes score with numpy only

    from lodestar.tenant_config import TenantConfig

EASE = "ease"
SVD = "svd"


@dataclass
class CollabModel:
    kind: str  # "ease" or "svd"
    item_ids: list[str]
    factors: np.ndarray  # items x rank, for candidate retrieval (Qdrant "collab" vectors)
    damping: np.ndarray  # per item, how much its interactions count in a user's vector (popularity damped)
    ease: np.ndarray | None = None  # items x items (EASE only)
    meta: dict[str, Any] | None = None
    # diag(P) of EASE's inverse (EASE only; absent in models saved before it was kept). With it, a
    # column of B is a rescaled row: B[i, c] = B[c, i] * d[i] / d[c], since P is symmetric.
    ease_diag: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.index = {item: k for k, item in enumerate(self.item_ids)}
        # The last user_profile asked for and its answer: a recommendation asks twice for the same
        # weights (its query vector, then its candidates' scores). Kept as a copy and compared by
        # value (tens of microseconds, against a millisecond to compute for a heavy user); the
        # tuple is replaced whole, so request threads sharing the model never see another's answer.
        self._last_profile: tuple[dict[str, float], tuple[np.ndarray, np.ndarray]] | None = None
        # B as a plain array over the same memory (a row of a np.memmap is another memmap, slower to make).
        self._ease_rows = None if self.ease is None else np.asarray(self.ease)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "items.json").write_text(json.dumps(self.item_ids))
        np.save(directory / "factors.npy", self.factors.astype(np.float32))
        np.save(directory / "damping.npy", self.damping.astype(np.float32))
        if self.ease is not None:
            np.save(directory / "ease.npy", self.ease.astype(np.float32))
        if self.ease_diag is not None:
            np.save(directory / "ease_diag.npy", self.ease_diag.astype(np.float64))
        (directory / "meta.json").write_text(json.dumps({"kind": self.kind, **(self.meta or {})}))

    @classmethod
    def load(cls, directory: Path) -> CollabModel:
        meta = json.loads((directory / "meta.json").read_text())
        ease_path, diag_path = directory / "ease.npy", directory / "ease_diag.npy"
        return cls(
            kind=meta["kind"],
            item_ids=json.loads((directory / "items.json").read_text()),
            factors=np.load(directory / "factors.npy"),
            damping=np.load(directory / "damping.npy"),
            # Memory-mapped: several serving processes share one copy through the page cache.
            ease=np.load(ease_path, mmap_mode="r") if ease_path.is_file() else None,
            meta=meta,
            ease_diag=np.load(diag_path) if diag_path.is_file() else None,
        )

    def to_bytes(self) -> bytes:
        """The model as one ``.npz`` blob (for index adapters that keep it beside the index, not on disk)."""
        buffer = io.BytesIO()
        arrays = {"factors": self.factors.astype(np.float32), "damping": self.damping.astype(np.float32)}
        if self.ease is not None:
            arrays["ease"] = np.asarray(self.ease, dtype=np.float32)
        if self.ease_diag is not None:
            arrays["ease_diag"] = np.asarray(self.ease_diag, dtype=np.float64)
        header = json.dumps({"kind": self.kind, "item_ids": self.item_ids, "meta": self.meta or {}})
        np.savez(buffer, header=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CollabModel:
        with np.load(io.BytesIO(blob)) as data:
            header = json.loads(data["header"].tobytes().decode())
            return cls(kind=header["kind"], item_ids=header["item_ids"], factors=data["factors"],
                       damping=data["damping"], ease=data["ease"] if "ease" in data.files else None,
                       meta=header["meta"], ease_diag=data["ease_diag"] if "ease_diag" in data.files else None)

    def factors_for(self, item_ids: list[str]) -> np.ndarray:
        """Item factors aligned with ``item_ids`` (zeros for items the model does not cover)."""
        out = np.zeros((len(item_ids), self.factors.shape[1]), dtype=np.float32)
        rows = [(r, self.index[i]) for r, i in enumerate(item_ids) if i in self.index]
        if rows:
            at, k = zip(*rows, strict=True)
            out[list(at)] = self.factors[list(k)]
        return out

    # -- scoring ---------------------------------------------------------------------------------
    def user_profile(self, item_weights: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """The user's known items (model indices) and their weights."""
        last = self._last_profile
        if last is not None and last[0] == item_weights:
            return last[1]
        # As arrays, in the weights' order: a heavy user's thousands of items in one pass each.
        n = len(item_weights)
        idx = np.fromiter(map(self.index.get, item_weights, itertools.repeat(-1)), dtype=np.int64, count=n)
        w = np.fromiter(item_weights.values(), dtype=np.float64, count=n)
        known = (idx >= 0) & (w != 0.0)
        profile = idx[known], w[known].astype(np.float32)
        self._last_profile = (dict(item_weights), profile)
        return profile

    def query_vector(
        self, item_weights: dict[str, float], profile: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """The user's vector in factor space (dot product with item factors ~ collaborative score);
        ``profile``: :meth:`user_profile` of ``item_weights`` when the caller has it."""
        idx, w = self.user_profile(item_weights) if profile is None else profile
        if not len(idx) or w.max() <= 0:
            return None
        return (w * self.damping[idx]) @ self.factors[idx]

    def scores(
        self, item_weights: dict[str, float], candidates: list[str], profile: tuple[np.ndarray, np.ndarray] | None = None,
        memo: Callable[[int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """Collaborative scores of candidate items (0 for items the model does not know); ``profile``:
        :meth:`user_profile` of ``item_weights`` when the caller kept it; ``memo``: where the caller
        keeps this profile's EASE scores between requests (see :meth:`_ease_scores`)."""
        idx, w = self.user_profile(item_weights) if profile is None else profile
        out = np.zeros(len(candidates), dtype=np.float32)
        if not len(idx):
            return out
        cand = np.fromiter(map(self.index.get, candidates, itertools.repeat(-1)), dtype=np.int64, count=len(candidates))
        known = cand >= 0
        if not known.any():
            return out
        if self.ease is not None:
            out[known] = self._ease_scores(idx, w, cand[known], memo)
        else:
            out[known] = ((w * self.damping[idx]) @ self.factors[idx]) @ self.factors[cand[known]].T
        return out

    def _ease_scores(
        self, idx: np.ndarray, w: np.ndarray, cand: np.ndarray, memo: Callable[[int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """``w @ B[idx][:, cand]``, from whichever rows of the memory-mapped B are fewer: the user's
        (a light user) or, through ``ease_diag``, the candidates' (a heavy user, whose thousands of
        rows would be most of a request).

        A heavy user's scores are kept in ``memo(n_items)`` (an array by model index, NaN where not
        scored yet) when the caller has one: the same user ranked again with the same profile (another
        page, exclusion or filter) scores only the candidates it has not scored before. Each
        candidate's score is computed alone, so a kept one is the very value computing it again gives.

        Rows are read whole, front to back, as a request finds them: out of the processor's caches.
        A heavy user's candidate rows are each dotted in place with the user's weights spread over
        the catalog: 1.5 ms for 310 candidates whatever the history, where copying those rows
        (12 MB) and gathering the user's columns out of them took 2.5 ms for 500 items of history
        and 5.5 for 2,700 (``bench/ease_scores.py``, MovieLens, caches flushed before each call)."""
        rows = self._ease_rows
        if self.ease_diag is None or len(idx) <= len(cand):
            return (w @ rows[idx])[cand]
        if memo is None:
            return self._heavy_scores(idx, w, cand)
        kept = memo(rows.shape[0])
        scores = kept[cand]
        todo = np.isnan(scores)
        if todo.any():
            scores[todo] = kept[cand[todo]] = self._heavy_scores(idx, w, cand[todo])
        return scores

    def _heavy_scores(self, idx: np.ndarray, w: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """:meth:`_ease_scores` from the candidates' rows of B, one candidate at a time."""
        rows = self._ease_rows
        d = self.ease_diag
        spread = np.zeros(rows.shape[0], dtype=np.float32)
        spread[idx] = w * d[idx]  # B[c, i] * d[i] summed over the user's items i, divided by d[c] below
        ascending = np.argsort(cand, kind="stable")
        order = cand[ascending]  # ascending rows read the mapped file forward
        dots = np.fromiter(map(spread.dot, map(rows.__getitem__, order)), dtype=np.float64, count=len(order))
        scores = np.empty(len(cand), dtype=np.float64)
        scores[ascending] = dots / d[order]
        return scores.astype(np.float32)


def event_item_weights(events: list[dict[str, Any]], config: TenantConfig) -> dict[str, float]:
    """Per item, the sum of its events' type weight times recency weight (latest event first)."""
    return item_weights_and_sums(events, config)[0]


def item_weights_and_sums(
    events: list[dict[str, Any]], config: TenantConfig,
) -> tuple[dict[str, float], dict[str, float], int]:
    """:func:`event_item_weights`, with, per item, its events' type weights summed without recency,
    and how many events weighed: what :func:`aged_item_weights` needs to add newer events later."""
    decay = 0.5 ** (1.0 / config.collab.recency_half_life_events)
    floor = config.collab.recency_floor
    weights = config.event_weights
    ordered = sorted(events, key=itemgetter("ts"), reverse=True)
    out: dict[str, float] = {}
    sums: dict[str, float] = {}
    recency = 1.0  # 0.5 ** (position / half_life), position counting the events that weigh
    weighed = 0
    for event in ordered:
        kind = event["type"]
        # event_weight inlined (the same rule): this loop runs over every event of a heavy user.
        weight = weights.get(kind, 0.0)
        if kind == RATING and (value := event.get("value")) is not None:
            weight *= float(value) / RATING_SCALE
        if weight == 0.0:
            continue
        item = event["item_id"]
        out[item] = out.get(item, 0.0) + weight * (recency + floor)
        sums[item] = sums.get(item, 0.0) + weight
        recency *= decay
        weighed += 1
    return out, sums, weighed


def aged_item_weights(
    weights: dict[str, float], sums: dict[str, float], newer: list[dict[str, Any]], config: TenantConfig,
) -> tuple[dict[str, float], dict[str, float]]:
    """The item weights and sums (:func:`item_weights_and_sums`) of a history after ``newer``
    events were added to it, each of them later (``ts``) than every event of the history, without
    the history: its events move down by as many positions as newer events weigh, so each one's
    recency part is multiplied by ``decay`` that many times (its floor part stays), and the newer
    events' own weights are added. Equal to weighing the whole history again, up to rounding."""
    new_weights, new_sums, weighed = item_weights_and_sums(newer, config)
    floor = config.collab.recency_floor
    age = 0.5 ** (weighed / config.collab.recency_half_life_events)

    def aged(item: str) -> float:
        return age * (weights[item] - floor * sums[item]) + floor * sums[item]

    # The newer events' items first, then the history's: the order weighing it all again gives.
    out = {item: w + aged(item) if item in weights else w for item, w in new_weights.items()}
    totals = {item: s + sums.get(item, 0.0) for item, s in new_sums.items()}
    for item in weights:
        if item not in out:
            out[item], totals[item] = aged(item), sums[item]
    return out, totals


def positive_interactions(events: pd.DataFrame, weights: dict[str, float]) -> pd.DataFrame:
    """(user_id, item_id) pairs whose summed event weight is positive."""
    if events.empty:
        return pd.DataFrame(columns=["user_id", "item_id"])
    frame = pd.DataFrame({"user_id": events["user_id"], "item_id": events["item_id"],
                          "w": event_weights(events, weights)})
    net = frame.groupby(["user_id", "item_id"], sort=False)["w"].sum().reset_index()
    return net[net["w"] > 0][["user_id", "item_id"]]


def fingerprint(pairs: pd.DataFrame, config: TenantConfig) -> str:
    """What a fit on ``pairs`` depends on: the pairs and the model settings. The fit is deterministic,
    so an equal fingerprint means an equal model (and a refit can be skipped)."""
    ordered = pairs.sort_values(["user_id", "item_id"])
    digest = hashlib.sha1(json.dumps(config.as_dict()["collab"], sort_keys=True).encode())
    digest.update(pd.util.hash_pandas_object(ordered[["user_id", "item_id"]], index=False).to_numpy().tobytes())
    return digest.hexdigest()


def fit(pairs: pd.DataFrame, item_ids: list[str], config: TenantConfig) -> CollabModel:
    """Fit the tenant's collaborative model on positive (user, item) pairs over ``item_ids``.

    The model covers the items of ``item_ids`` that have interactions (an item without any scores 0
    in either model kind), so adding an item nobody has engaged with yet leaves the model unchanged.
    """
    settings = config.collab
    pairs = pairs[pairs["item_id"].isin(set(item_ids))]
    engaged = set(pairs["item_id"])
    if engaged:
        item_ids = [i for i in item_ids if i in engaged]
    index = {item: k for k, item in enumerate(item_ids)}
    users = {u: k for k, u in enumerate(pd.unique(pairs["user_id"]))}
    import scipy.sparse as sp

    X = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (pairs["user_id"].map(users), pairs["item_id"].map(index))),
        shape=(max(len(users), 1), len(item_ids)),
    )
    X.data[:] = 1.0  # a pair listed twice is still one interaction
    rank = int(min(settings.factors, max(1, min(X.shape) - 1)))
    factors, damping = _svd_factors(X, rank)
    meta = {"users": len(users), "items": len(item_ids), "interactions": int(X.nnz), "factors": rank}
    if len(item_ids) <= settings.ease_max_items:
        lam = settings.ease_lambda
        B, diag = _ease(X, lam)
        return CollabModel(EASE, list(item_ids), factors, damping, B, {**meta, "lambda": lam}, diag)
    return CollabModel(SVD, list(item_ids), factors, damping, None, meta)


def gram_matrix(X: sp.csr_matrix, chunk_users: int = 8192) -> np.ndarray:
    """XᵀX as a dense float32 matrix, accumulated over chunks of users with dense BLAS products
    (far faster than a sparse product whose result is nearly dense, and bounded in memory)."""
    gram = np.zeros((X.shape[1], X.shape[1]), dtype=np.float32)
    for start in range(0, X.shape[0], chunk_users):
        block = X[start:start + chunk_users].toarray()
        gram += block.T @ block
    return gram


def _ease(X: sp.csr_matrix, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE's ``B = -P / diag(P)`` (float32, zero diagonal) and ``diag(P)``."""
    gram = gram_matrix(X)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    diag = np.diag(inverse).astype(np.float64)
    B = -inverse / np.diag(inverse)
    np.fill_diagonal(B, 0.0)
    return B.astype(np.float32), diag


def _svd_factors(X: sp.csr_matrix, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """PureSVD of the popularity-damped interaction matrix: item factors (items x rank) and the
    per-item damping applied to a user's interactions before folding them in."""
    n_items = X.shape[1]
    damp = np.power(np.asarray(X.sum(axis=0)).ravel() + 1.0, -0.25).astype(np.float32)
    if X.nnz == 0 or rank < 1 or min(X.shape) < 2:
        return np.zeros((n_items, max(rank, 1)), dtype=np.float32), damp
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    _, _, vt = svds((X @ sp.diags(damp)).astype(np.float32), k=rank, random_state=0)
    return vt.T.astype(np.float32), damp
