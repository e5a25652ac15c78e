"""One settings object, read from ``LODESTAR_*`` environment variables, with embedded defaults."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# MiniLM exported to ONNX with int8 weights (lodestar/embed_onnx.py): 2.4x torch's texts/s on this
# machine, NDCG@10 within 1% of torch's; "torch" and "onnx" (float) by LODESTAR_EMBED_BACKEND.
DEFAULT_EMBED_BACKEND = "onnx-int8"


def default_models_dir(environ: dict[str, str] | None = None) -> Path:
    """Where ONNX exports of the embedding model are kept: ``LODESTAR_MODELS_DIR``, else
    ``$XDG_CACHE_HOME/lodestar/models`` (``~/.cache/lodestar/models``). Shared by every data dir, as
    a Hugging Face model cache is: an export depends on the model's files only, never on a tenant."""
    env = os.environ if environ is None else environ
    if env.get("LODESTAR_MODELS_DIR"):
        return Path(env["LODESTAR_MODELS_DIR"]).resolve()
    if env.get("XDG_CACHE_HOME"):
        cache = Path(env["XDG_CACHE_HOME"])
    else:
        try:
            cache = Path.home() / ".cache"
        except RuntimeError:  # no home directory (a service account): the temporary directory
            cache = Path(tempfile.gettempdir())
    return (cache / "lodestar" / "models").resolve()


ADS_SECRET_ENV = "LODESTAR_ADS_SECRET"  # seals retail media's ad ids (lodestar/ads/tokens.py)


@dataclass(frozen=True)
class Settings:
    """Where Lodestar keeps its data and which adapters it uses.

    ``data_dir`` holds everything the embedded defaults write (CDP store, Parquet extracts, index
    versions, caches), so two data dirs never see each other's tenants.
    """

    data_dir: Path = field(default_factory=lambda: Path("var"))
    embed_model: str = DEFAULT_MODEL
    embed_backend: str = DEFAULT_EMBED_BACKEND
    models_dir: Path = field(default_factory=default_models_dir)
    admin_key: str | None = None
    arango_url: str | None = None
    arango_database: str = "lodestar"
    arango_user: str = "root"
    arango_password: str = ""
    arango_settle_s: float = 2.0  # change reads skip rows younger than this (writes still in flight)
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_mode: str = "collection"  # or "shared": one collection for all tenants (thousands of small ones)
    sensor_interval_s: int = 5  # a tick that finds no change costs ~20 ms at 1,000 tenants
    automation_interval_s: int = 10
    rebuild_cron: str = "0 3 * * *"
    dagster_ui_url: str = "http://127.0.0.1:3000"  # where the console's links into the Dagster UI go
    console_secure_cookies: bool = False  # set (LODESTAR_CONSOLE_SECURE_COOKIES=1) when served over HTTPS

    def secret(self, name: str, env_var: str) -> str:
        """A signing secret: ``env_var`` when set (the same on every machine of a deployment), else
        one made once per data dir (``<data_dir>/<name>/secret``, 0600), so every worker process and
        a restart agree on it."""
        if os.environ.get(env_var):
            return os.environ[env_var]
        path = self.data_dir / name / "secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # another process made it a moment ago: wait for its write
                if text := path.read_text().strip():
                    return text
                time.sleep(0.01)
            raise RuntimeError(f"{path} is empty: delete it to make a new secret") from None
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        return path.read_text().strip()

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            data_dir=Path(env.get("LODESTAR_DATA_DIR", "var")).resolve(),
            embed_model=env.get("LODESTAR_EMBED_MODEL", DEFAULT_MODEL),
            embed_backend=env.get("LODESTAR_EMBED_BACKEND", DEFAULT_EMBED_BACKEND),
            models_dir=default_models_dir(env),
            admin_key=env.get("LODESTAR_ADMIN_KEY") or None,
            arango_url=env.get("LODESTAR_ARANGO_URL") or None,
            arango_database=env.get("LODESTAR_ARANGO_DATABASE", "lodestar"),
            arango_user=env.get("LODESTAR_ARANGO_USER", "root"),
            arango_password=env.get("LODESTAR_ARANGO_PASSWORD", ""),
            arango_settle_s=float(env.get("LODESTAR_ARANGO_SETTLE", "2")),
            qdrant_url=env.get("LODESTAR_QDRANT_URL") or None,
            qdrant_api_key=env.get("LODESTAR_QDRANT_API_KEY") or None,
            qdrant_mode=env.get("LODESTAR_QDRANT_MODE", "collection"),
            sensor_interval_s=int(env.get("LODESTAR_SENSOR_INTERVAL", "5")),
            automation_interval_s=int(env.get("LODESTAR_AUTOMATION_INTERVAL", "10")),
            rebuild_cron=env.get("LODESTAR_REBUILD_CRON", "0 3 * * *"),
            dagster_ui_url=env.get("LODESTAR_DAGSTER_UI_URL", "http://127.0.0.1:3000").rstrip("/"),
            console_secure_cookies=env.get("LODESTAR_CONSOLE_SECURE_COOKIES", "") not in ("", "0", "false", "no"),
        )

    @property
    def cdp_path(self) -> Path:
        return self.data_dir / "cdp.sqlite"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def tenant_dir(self, tenant: str) -> Path:
        return self.data_dir / "tenants" / tenant
