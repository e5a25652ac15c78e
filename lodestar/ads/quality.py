"""The ad-quality model: each ad's click probability (pCTR), learned from the ads the API served and
the clicks they got, so that the auction ranks by eCPM = pCTR x bid instead of relevance alone.

* **Training data**: every served ad of the serve log (not ghosts) with its ad id; its label is
  whether a ``click`` event came back with that ad id. Features: the request's relevance for the
  ad (the organic signals), its position (as 1 / position), the product's popularity and price
  (log), the line item's and the advertiser's smoothed click rates before that serve (a Beta prior
  at the tenant's mean, so a new one starts at the mean and no serve sees its own click), and the
  placement.
* **Model**: logistic regression (scikit-learn) on standardized features. Chosen over gradient
  boosting (LightGBM) because its probabilities are calibrated by construction (it minimizes log
  loss), it needs no tuning, it trains in milliseconds on a tenant's serve log, and the auction
  can score thousands of ads per request with one small dot product; its coefficients also explain
  a pCTR in the console and the API. Boosting would buy interactions at the cost of a calibration
  step and per-request tree walks.
* **Evaluation** on a time-based holdout (the latest 20% of serves): AUC, log loss and calibration
  by decile, beside the relevance-only model (the part-1 quality) and the published model; a model
  no better than relevance alone, or worse in AUC or log loss than the published one, is not
  published (the asset reports it as its failed blocking check).
* **Serving**: the pCTR of an ad as if at position 1 (ranking compares ads, not slots). A tenant
  with fewer than :data:`MIN_CLICKS` clicks or :data:`MIN_SERVES` served ads has no model, and the
  auction uses relevance as before.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURES = ("relevance", "position_inv", "popularity", "log_price", "line_item_ctr", "advertiser_ctr", "search",
            "similar", "session")
PRIOR_WEIGHT = 50.0  # pseudo-serves of the tenant's mean CTR behind each line item's own rate
MIN_CLICKS = 30
MIN_SERVES = 500
HOLDOUT = 0.2
REPORT = "ad_quality"  # the published model, in the CDP store


@dataclass
class QualityModel:
    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    prior_ctr: float
    line_item_ctr: dict[str, float] = field(default_factory=dict)
    advertiser_ctr: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_at: float = 0.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def ctr_of(self, line_item: str) -> float:
        return self.line_item_ctr.get(line_item, self.prior_ctr)

    def advertiser_ctr_of(self, advertiser: str) -> float:
        return self.advertiser_ctr.get(advertiser, self.prior_ctr)

    def as_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "coef": self.coef, "intercept": self.intercept, "mean": self.mean,
                "scale": self.scale, "prior_ctr": self.prior_ctr, "line_item_ctr": self.line_item_ctr,
                "advertiser_ctr": self.advertiser_ctr,
                "metrics": self.metrics, "trained_at": self.trained_at}

    @classmethod
    def of(cls, data: dict[str, Any]) -> QualityModel | None:
        if data.get("features") != list(FEATURES):  # a model of another release's features is not used
            return None
        return cls(data["coef"], data["intercept"], data["mean"], data["scale"], data["prior_ctr"],
                   data.get("line_item_ctr", {}), data.get("advertiser_ctr", {}), data.get("metrics", {}),
                   data.get("trained_at", 0.0))


def features(relevance: np.ndarray, position: np.ndarray, popularity: np.ndarray, price: np.ndarray,
             line_item_ctr: np.ndarray, advertiser_ctr: np.ndarray, placement: Sequence[str] | str) -> np.ndarray:
    """The feature matrix (rows: ads) in :data:`FEATURES` order."""
    n = len(relevance)
    places = [placement] * n if isinstance(placement, str) else list(placement)
    return np.column_stack([
        np.asarray(relevance, dtype=float), 1.0 / np.maximum(np.asarray(position, dtype=float), 1.0),
        np.asarray(popularity, dtype=float), np.log1p(np.maximum(np.asarray(price, dtype=float), 0.0)),
        np.asarray(line_item_ctr, dtype=float), np.asarray(advertiser_ctr, dtype=float),
        *(np.asarray([p == name for p in places], dtype=float) for name in ("search", "similar", "session")),
    ]) if n else np.zeros((0, len(FEATURES)))


@dataclass
class TrainingData:
    x: np.ndarray
    y: np.ndarray
    ts: np.ndarray
    prior_ctr: float
    line_item_ctr: dict[str, float]  # each line item's smoothed rate over all of the data
    advertiser_ctr: dict[str, float] = field(default_factory=dict)  # each advertiser's


def training_data(serves: Iterable[dict[str, Any]], clicked: set[str], popularity: dict[str, float],
                  prices: dict[str, float] | None = None) -> TrainingData:
    """Served ads (with an ad id) in time order, labelled by whether a click came back, with the
    line item's and the advertiser's smoothed click rates *before* each serve (no row sees its own
    label)."""
    prices = prices or {}
    rows = sorted((s for s in serves if not s["ghost"] and s.get("ad_id")), key=lambda s: s["ts"])
    labels = np.asarray([s["ad_id"] in clicked for s in rows], dtype=float)
    prior = float(labels.mean()) if len(labels) else 0.0
    history: dict[str, dict[str, list[float]]] = {"line_item": defaultdict(lambda: [0.0, 0.0]),
                                                  "advertiser": defaultdict(lambda: [0.0, 0.0])}
    before: dict[str, list[float]] = {"line_item": [], "advertiser": []}
    for row, label in zip(rows, labels, strict=True):
        for kind in ("line_item", "advertiser"):
            counts = history[kind][row.get(kind) or ""]
            before[kind].append((counts[0] + PRIOR_WEIGHT * prior) / (counts[1] + PRIOR_WEIGHT))
            counts[0] += label
            counts[1] += 1
    x = features(np.asarray([r.get("relevance") or 0.0 for r in rows]), np.asarray([r.get("position") or 1 for r in rows]),
                 np.asarray([popularity.get(r["product"], 0.0) for r in rows]),
                 np.asarray([prices.get(r["product"], 0.0) for r in rows]), np.asarray(before["line_item"]),
                 np.asarray(before["advertiser"]), [r["placement"] for r in rows])

    def final(kind: str) -> dict[str, float]:
        return {k: (c + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT) for k, (c, n) in history[kind].items()}

    return TrainingData(x, labels, np.asarray([r["ts"] for r in rows]), prior, final("line_item"), final("advertiser"))


def fit(x: np.ndarray, y: np.ndarray, columns: Sequence[int] | None = None) -> tuple[Any, np.ndarray, np.ndarray]:
    """A logistic regression (scikit-learn, imported here: serving processes score published models
    with numpy alone and need not hold scikit-learn in memory) on standardized columns."""
    from sklearn.linear_model import LogisticRegression

    cols = list(range(x.shape[1])) if columns is None else list(columns)
    mean, scale = x[:, cols].mean(axis=0), x[:, cols].std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=1.0, max_iter=1000).fit((x[:, cols] - mean) / scale, y)
    return model, mean, scale


def calibration(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[list[dict[str, float]], float]:
    """Mean predicted and observed click rate by decile of prediction, and the expected calibration
    error (their gap, weighted by the deciles' sizes)."""
    order = np.argsort(p, kind="stable")
    rows, error = [], 0.0
    for part in np.array_split(order, bins):
        if not len(part):
            continue
        predicted, observed = float(p[part].mean()), float(y[part].mean())
        rows.append({"predicted": round(predicted, 5), "observed": round(observed, 5), "ads": int(len(part))})
        error += len(part) / len(p) * abs(predicted - observed)
    return rows, error


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-6, 1 - 1e-6)
    deciles, ece = calibration(y, p)
    auc = float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan
    return {"auc": round(auc, 5), "log_loss": round(float(log_loss(y, p, labels=[0, 1])), 5),
            "calibration_error": round(ece, 5), "deciles": deciles}


@dataclass
class Candidate:
    model: QualityModel | None
    metrics: dict[str, Any]  # model, relevance_only and published on the holdout
    publish: bool
    reason: str
    regressed: bool = False  # worse than the published model (the asset's blocking check fails)


def train(data: TrainingData, published: QualityModel | None, now: float) -> Candidate:
    """Fit on the earliest 80%, evaluate on the latest 20% next to relevance alone and the published
    model, and say whether the new model may be published (not worse than the published one)."""
    n, clicks = len(data.y), int(data.y.sum())
    if n < MIN_SERVES or clicks < MIN_CLICKS:
        return Candidate(None, {"serves": n, "clicks": clicks}, False,
                         f"too little data: {n} served ads and {clicks} clicks (needs {MIN_SERVES} and {MIN_CLICKS})")
    cut = int(n * (1 - HOLDOUT))
    train_x, train_y, test_x, test_y = data.x[:cut], data.y[:cut], data.x[cut:], data.y[cut:]
    if not 0 < train_y.sum() < len(train_y) or not 0 < test_y.sum() < len(test_y):
        return Candidate(None, {"serves": n, "clicks": clicks}, False, "no clicks (or only clicks) in a period")
    lr, mean, scale = fit(train_x, train_y)
    model = QualityModel([float(c) for c in lr.coef_[0]], float(lr.intercept_[0]), [float(m) for m in mean],
                         [float(s) for s in scale], data.prior_ctr, data.line_item_ctr, data.advertiser_ctr,
                         trained_at=now)
    relevance_lr, r_mean, r_scale = fit(train_x, train_y, [0])
    metrics = {"serves": n, "clicks": clicks, "holdout_serves": int(len(test_y)),
               "model": _metrics(test_y, model.predict(test_x)),
               "relevance_only": _metrics(test_y, relevance_lr.predict_proba((test_x[:, [0]] - r_mean) / r_scale)[:, 1]),
               "true_ctr": round(float(test_y.mean()), 5)}
    if metrics["model"]["auc"] <= metrics["relevance_only"]["auc"]:
        return Candidate(model, metrics, False, "no better than relevance alone (AUC "
                         f"{metrics['model']['auc']} vs {metrics['relevance_only']['auc']}): the auction keeps "
                         "relevance")
    if published is not None:
        metrics["published"] = _metrics(test_y, published.predict(test_x))
        worse = (metrics["model"]["auc"] < metrics["published"]["auc"]
                 or metrics["model"]["log_loss"] > metrics["published"]["log_loss"])
        if worse:
            return Candidate(model, metrics, False, regressed=True, reason="worse than the published model on the same holdout "
                             f"(AUC {metrics['model']['auc']} vs {metrics['published']['auc']}, log loss "
                             f"{metrics['model']['log_loss']} vs {metrics['published']['log_loss']})")
    model.metrics = metrics
    return Candidate(model, metrics, True, "better than relevance alone" + (
        " and not worse than the published model" if published is not None else ""))
