"""The offline evaluation of a tenant's ranking, and the gate that blocks publishing a worse version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lodestar import evaluation
from lodestar.lineage.embeddings import embedding_hashes, read_embeddings
from lodestar.lineage.files import TenantFiles, read_extract, write_table
from lodestar.lineage.index_build import changed_share
from lodestar.tenant_config import TenantConfig


@dataclass(frozen=True)
class EvaluationResult:
    result: dict[str, Any]  # what lodestar.evaluation.evaluate_tenant returned (status, metrics, strategies)
    reused: bool  # the kept result stands: same events and configuration, few items changed
    items_changed_since: float  # share of embedded items changed since the kept result

    @property
    def evaluated(self) -> bool:
        return self.result.get("status") == "evaluated"


def read_evaluation(files: TenantFiles) -> dict[str, Any]:
    """The kept evaluation result (empty before the first)."""
    return json.loads(files.evaluation.read_text()) if files.evaluation.is_file() else {}


def _inputs(events: pd.DataFrame, config: TenantConfig) -> str:
    """A digest of what an evaluation depends on besides the catalog: the events and the configuration."""
    # Quotas, retail media and connector settings do not change the organic ranking the evaluation measures.
    shaping = {k: v for k, v in config.as_dict().items() if k not in ("quotas", "ads", "connectors")}
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True).encode())
    columns = [c for c in ("user_id", "item_id", "type", "value", "ts") if c in events]
    digest.update(pd.util.hash_pandas_object(events.sort_values("id")[columns], index=False).to_numpy().tobytes())
    return digest.hexdigest()


def offline_evaluation(files: TenantFiles, config: TenantConfig, tenant: str) -> EvaluationResult:
    """Evaluate the served ranking on a temporal holdout of the tenant's events (see
    ``lodestar.evaluation``) and keep the result for the publish gate.

    The kept result stands (``reused``) when the events and the configuration are those it was
    computed on and at most ``index.incremental_max_fraction`` of the embedded items changed since:
    the holdout is made of interactions, and a small catalog edit moves it by noise only.
    """
    items = embedding_hashes(files)
    events = read_extract(files, "events")
    inputs = _inputs(events, config)
    previous = read_evaluation(files)
    if previous.get("inputs") == inputs and files.evaluation_items.is_file():
        table = pq.read_table(files.evaluation_items)
        kept = dict(zip(table.column("id").to_pylist(), table.column("content_hash").to_pylist(), strict=True))
        share = changed_share(kept, items)
        if share <= config.index.incremental_max_fraction:
            return EvaluationResult(previous, reused=True, items_changed_since=share)
    ids, vectors = read_embeddings(files)
    result = {**evaluation.evaluate_tenant(events, ids, vectors, config, tenant), "inputs": inputs}
    write_table(pa.table({"id": ids, "content_hash": [items[i] for i in ids]}), files.evaluation_items)
    files.evaluation.write_text(json.dumps(result))
    return EvaluationResult(result, reused=False, items_changed_since=0.0)


def regression_problem(result: dict[str, Any], published: dict[str, Any] | None, max_regression: float) -> str | None:
    """Why a new version must not replace the published one (``None`` when it may)."""
    if result.get("status") != "evaluated" or not published or "ndcg@10" not in published:
        return None
    new, old = result["lodestar"]["ndcg@10"], float(published["ndcg@10"])
    if new < old * (1.0 - max_regression):
        return (f"NDCG@10 {new:.4f} is more than {max_regression:.0%} below the published version's {old:.4f} "
                f"({published.get('version', '?')}); the published version keeps serving. Check the latest "
                "import, or raise evaluation.max_regression in the tenant configuration to accept it.")
    return None
