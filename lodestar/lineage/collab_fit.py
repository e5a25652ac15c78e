"""Fitting the tenant's collaborative model, skipped when its inputs did not change."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lodestar import collab
from lodestar.collab import CollabModel
from lodestar.lineage.files import TenantFiles, read_extract
from lodestar.tenant_config import TenantConfig


@dataclass(frozen=True)
class CollabFitResult:
    kind: str  # "ease" or "svd"
    refit: bool  # False: the inputs were those of the current model, which stands
    meta: dict[str, Any]  # users, items, interactions, factors (and lambda), fingerprint
    problems: list[str] = field(default_factory=list)  # what the finite_model check reports


def model_problems(model: CollabModel) -> list[str]:
    """What is wrong with a fitted model's numbers (empty when fine)."""
    problems = []
    for name in ("factors", "damping", "ease"):
        values = getattr(model, name)
        if values is not None and not np.isfinite(np.asarray(values)).all():
            problems.append(f"the model's {name} hold values that are not finite numbers")
    return problems


def collab_model(files: TenantFiles, config: TenantConfig) -> CollabFitResult:
    """Fit the tenant's collaborative model on all positive interactions, skipped when they and the
    model settings are those of the current model.

    The model covers every item users engaged with, indexed or not: an item that went out of stock
    still tells what its buyers like, and removing it from the catalog leaves the model (and the
    collab vectors of every other item) unchanged, so the index can be updated incrementally.
    """
    pairs = collab.positive_interactions(read_extract(files, "events"), config.event_weights)
    fingerprint = collab.fingerprint(pairs, config)
    meta_path = files.model_candidate / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == fingerprint:
            return CollabFitResult(kind=meta.pop("kind"), refit=False, meta=meta,
                                   problems=model_problems(CollabModel.load(files.model_candidate)))
    model = collab.fit(pairs, sorted(pd.unique(pairs["item_id"])), config)
    model.meta = {**(model.meta or {}), "fingerprint": fingerprint}
    shutil.rmtree(files.model_candidate, ignore_errors=True)
    model.save(files.model_candidate)
    return CollabFitResult(kind=model.kind, refit=True, meta=dict(model.meta), problems=model_problems(model))


def candidate_model(files: TenantFiles) -> CollabModel | None:
    """The last fitted model (``None`` before the first fit)."""
    return CollabModel.load(files.model_candidate) if (files.model_candidate / "meta.json").is_file() else None
