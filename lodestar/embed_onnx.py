"""The ONNX backends of the embedder (``LODESTAR_EMBED_BACKEND=onnx`` or ``onnx-int8``): the shipped
model exported once to ONNX, offline from its own files (``onnx-int8``: dynamically quantized with
onnxruntime's tools), cached in the settings' models dir (``LODESTAR_MODELS_DIR``), and run by onnxruntime without torch.
:func:`lodestar.embed.load_encoder` chooses between this and sentence-transformers."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lodestar.embed import _sentence_transformer, check_backend, resolve_model
from lodestar.errors import InvalidInput

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
        # onnxruntime's pool threads spin after each run, waiting for the next, unless told not to:
        # a search query's embedding then cost its server 5.9 ms of a second core on top of its
        # own 3.5 (one client asking in turn, this 2-core machine); not spinning, 1.3. A batch of
        # a materialization keeps the threads busy either way.
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(directory / "model.onnx"), options,
                                                     providers=["CPUExecutionProvider"])
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
def load_onnx(name: str, backend: str, models_dir: str) -> OnnxEncoder:
    """The ONNX encoder of a model and backend, exported on first use and loaded from there after."""
    directory = Path(models_dir) / export_name(name, backend)
    if not _export_is_current(directory, name):
        export_onnx(name, backend, directory)
    return OnnxEncoder(directory)


def export_name(name: str, backend: str) -> str:
    """The folder of a model's export under the models dir: readable for a plain model name, with a
    short hash for a path (two paths ending in the same folder name never share an export)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        return f"{name}-{backend}"
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[-40:]
    return f"{tail}-{hashlib.sha256(name.encode()).hexdigest()[:8]}-{backend}"


def _source_files(name: str) -> tuple[Path, list[Path]] | None:
    location = Path(resolve_model(name))
    if not location.is_dir():
        return None  # a hub name, resolved from the local Hugging Face cache
    return location, sorted(p for p in location.rglob("*") if p.is_file())


def _source_stamp(name: str) -> str:
    """Where the model's files are, with their names, sizes and times: cheap to read, and the same
    until the model is installed again or retrained."""
    found = _source_files(name)
    if found is None:
        return name
    location, files = found
    digest = hashlib.sha256(str(location.resolve()).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(location)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _source_fingerprint(name: str) -> str:
    """What the export was made from: the model's files by name and content, wherever they are
    installed. A second virtualenv holding the same model package shares the export; an upgraded
    package, or a retrained local model, is exported again. Reading 90 MB takes a fraction of a
    second, so it is read only when the stamp (:func:`_source_stamp`) has changed."""
    found = _source_files(name)
    if found is None:
        return name
    location, files = found
    digest = hashlib.blake2b()
    for path in files:
        digest.update(f"{path.relative_to(location)}:{path.stat().st_size}:".encode())
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "blake2b").digest())
    return digest.hexdigest()


def _export_is_current(directory: Path, name: str) -> bool:
    """Whether the export in ``directory`` was made by this recipe from the files ``name`` resolves
    to now. Its stamp is compared first; when only the stamp differs (the same files installed
    elsewhere, or again), the export is kept and stamped anew."""
    try:
        meta = json.loads((directory / _EXPORT_META).read_text())
    except (OSError, ValueError):
        return False
    if not (meta.get("format") == _EXPORT_FORMAT and (directory / "model.onnx").is_file()
            and (directory / "tokenizer.json").is_file()):
        return False
    stamp = _source_stamp(name)
    if meta.get("stamp") == stamp:
        return True
    if meta.get("source") != _source_fingerprint(name):
        return False
    _write_meta(directory, dict(meta, stamp=stamp))
    return True


def _write_meta(directory: Path, meta: dict) -> None:
    """Replace an export's meta file in one rename; where the models dir is read-only, leave it
    (the files are then read on every load, which is slower but right)."""
    staging = directory / f".{_EXPORT_META}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.write_text(json.dumps(meta, indent=1))
        staging.replace(directory / _EXPORT_META)
    except OSError:
        staging.unlink(missing_ok=True)


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
            "format": _EXPORT_FORMAT, "model": name, "backend": backend,
            "source": _source_fingerprint(name), "stamp": _source_stamp(name),
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
        if _export_is_current(directory, meta["model"]):
            return
    stale = directory.with_name(f".{directory.name}.stale-{uuid.uuid4().hex[:8]}")
    directory.rename(stale)
    staging.rename(directory)
    shutil.rmtree(stale, ignore_errors=True)


