"""Where a tenant's pipeline files live under the data dir, and how they are written and read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lodestar.errors import InvalidInput


@dataclass(frozen=True)
class TenantFiles:
    """The pipeline's files of one tenant (``Settings.tenant_dir``). Index versions and the models
    frozen with them belong to the index adapter, not to this layout."""

    root: Path

    def extract(self, entity: str) -> Path:
        return self.root / "extracts" / f"{entity}.parquet"

    def extract_state(self, entity: str) -> Path:
        """The extract's watermark state, written after its data."""
        return self.extract(entity).with_suffix(".state.json")

    @property
    def item_features(self) -> Path:
        return self.root / "features" / "items.parquet"

    @property
    def user_features(self) -> Path:
        return self.root / "features" / "users.parquet"

    @property
    def item_embeddings(self) -> Path:
        return self.root / "embeddings" / "items.parquet"

    @property
    def candidate(self) -> Path:
        """The last built, not yet published, index version."""
        return self.root / "index" / "CANDIDATE"

    @property
    def model_candidate(self) -> Path:
        """The last fitted collaborative model, attached to the next index version built."""
        return self.root / "model" / "candidate"

    def manifest(self, version: str) -> Path:
        """Which items (and their fingerprints) index version ``version`` holds."""
        return self.root / "index" / "manifests" / f"{version}.parquet"

    def manifest_meta(self, version: str) -> Path:
        return self.manifest(version).with_suffix(".json")

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation" / "latest.json"

    @property
    def evaluation_items(self) -> Path:
        """The embedded items (id, content hash) the kept evaluation was computed on."""
        return self.root / "evaluation" / "items.parquet"

    @property
    def attribution(self) -> Path:
        return self.root / "analytics" / "attribution.parquet"


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Write a frame atomically (a reader never sees half a file)."""
    write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parquet(path: Path) -> pd.DataFrame:
    """A stage's input; a missing file says which asset to materialize first."""
    if not path.is_file():
        raise InvalidInput(f"{path} is missing: materialize the upstream asset first")
    return pq.read_table(path).to_pandas()


def read_extract(files: TenantFiles, entity: str) -> pd.DataFrame:
    return read_parquet(files.extract(entity))
