"""The ONNX backends of the embedder: exported once from the shipped model and reused, agreeing
with torch, never mixed with torch's vectors in the cache, and a clear error for a wrong name."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lodestar import demo, embed_onnx
from lodestar.embed import Embedder, model_key, resolve_model
from lodestar.embed_onnx import export_name
from lodestar.errors import InvalidInput
from lodestar.features import item_text
from lodestar.settings import DEFAULT_MODEL

TEXTS = ["waterproof hiking boots", "trail boots for wet mountain walks", "espresso machine for the kitchen",
         "Central bank raises rates again", "a quiet novel about a lighthouse keeper", ""]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A cache dir (with a models dir of its own inside) whose onnx-int8 export of the shipped model
    is made once for this module."""
    directory = tmp_path_factory.mktemp("cache")
    Embedder(cache_dir=directory, backend="onnx-int8", models_dir=directory / "models").encode(["export me"])
    return directory


@pytest.fixture(scope="module")
def torch_embedder():
    return Embedder(backend="torch")


def demo_texts(per_catalog: int) -> list[str]:
    return [item_text(i["title"], i["description"], i["categories"], i["tags"], i["attributes"])
            for generate in demo.GENERATORS.values() for i in generate()["items"][:per_catalog]]


@pytest.mark.model
def test_the_export_is_made_once_and_loaded_from_the_cache(cache_dir, monkeypatch):
    export = cache_dir / "models" / export_name(DEFAULT_MODEL, "onnx-int8")
    assert (export / "model.onnx").is_file() and (export / "tokenizer.json").is_file()
    assert not [p for p in export.parent.iterdir() if p.name.startswith(".")], "a staging folder was left behind"

    def no_export(*_args):
        raise AssertionError("exported again")

    monkeypatch.setattr(embed_onnx, "export_onnx", no_export)
    embed_onnx.load_onnx.cache_clear()  # a new process: only the files on disk remain
    vectors = Embedder(cache_dir=cache_dir, backend="onnx-int8", models_dir=cache_dir / "models").encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.model
def test_a_stale_export_is_not_used(cache_dir, tmp_path):
    stale = tmp_path / "export"
    shutil.copytree(cache_dir / "models" / export_name(DEFAULT_MODEL, "onnx-int8"), stale)
    meta = json.loads((stale / "lodestar-export.json").read_text())
    assert embed_onnx._export_is_current(stale, DEFAULT_MODEL)
    (stale / "lodestar-export.json").write_text(json.dumps(dict(meta, stamp="x", source="an older model package")))
    assert not embed_onnx._export_is_current(stale, DEFAULT_MODEL)
    (stale / "lodestar-export.json").write_text(json.dumps(dict(meta, format=meta["format"] - 1)))
    assert not embed_onnx._export_is_current(stale, DEFAULT_MODEL)


@pytest.mark.model
def test_the_same_model_files_installed_elsewhere_share_the_export(cache_dir, tmp_path, monkeypatch):
    """A second virtualenv (a fresh clone's, say) holds the same model package at another path, with
    other file times: its export is the same, so it is kept, not made again; a changed file is not."""
    export = tmp_path / "export"
    shutil.copytree(cache_dir / "models" / export_name(DEFAULT_MODEL, "onnx-int8"), export)
    elsewhere = tmp_path / "another-venv" / "model"
    shutil.copytree(resolve_model(DEFAULT_MODEL), elsewhere, copy_function=shutil.copy)  # new file times
    read = []
    fingerprint = embed_onnx._source_fingerprint
    monkeypatch.setattr(embed_onnx, "_source_fingerprint", lambda name: read.append(name) or fingerprint(name))

    assert embed_onnx._export_is_current(export, str(elsewhere))
    assert read == [str(elsewhere)], "the files were not compared by content"
    assert embed_onnx._export_is_current(export, str(elsewhere))
    assert read == [str(elsewhere)], "the export was not stamped for the new place: its files were read again"
    assert embed_onnx._export_is_current(export, DEFAULT_MODEL)  # and the first place still matches by content

    config = elsewhere / "config.json"
    config.write_text(config.read_text().replace("}", ', "retrained": true}', 1))
    assert not embed_onnx._export_is_current(export, str(elsewhere))


@pytest.mark.model
def test_onnx_int8_agrees_with_torch(cache_dir, torch_embedder):
    onnx = Embedder(cache_dir=cache_dir, backend="onnx-int8", models_dir=cache_dir / "models")
    cosine = np.sum(onnx.encode(TEXTS) * torch_embedder.encode(TEXTS), axis=1)
    assert cosine.min() > 0.95, cosine

    texts = demo_texts(per_catalog=40)
    mine, theirs = onnx.encode(texts), torch_embedder.encode(texts)
    nearest = []
    for vectors in (mine, theirs):
        scores = vectors @ vectors.T
        np.fill_diagonal(scores, -np.inf)
        nearest.append(np.argsort(-scores, axis=1)[:, :5])
    shared = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(*nearest, strict=True)])
    assert shared >= 0.9, shared


@pytest.mark.model
def test_the_cache_never_mixes_backends(cache_dir, torch_embedder):
    assert model_key(DEFAULT_MODEL, "torch") == DEFAULT_MODEL  # vectors cached before backends stay valid
    assert model_key(DEFAULT_MODEL, "onnx-int8") != model_key(DEFAULT_MODEL, "onnx") != DEFAULT_MODEL
    text = ["a text both backends embed"]
    from_torch, stats = Embedder(cache_dir=cache_dir, backend="torch").embed(text)
    assert (stats.encoded, stats.cached) == (1, 0)
    from_onnx, stats = Embedder(cache_dir=cache_dir, backend="onnx-int8", models_dir=cache_dir / "models").embed(text)
    assert (stats.encoded, stats.cached) == (1, 0), "the int8 backend took torch's vector from the cache"
    assert not np.array_equal(from_torch, from_onnx)
    for backend, expected in (("torch", from_torch), ("onnx-int8", from_onnx)):
        again, stats = Embedder(cache_dir=cache_dir, backend=backend, models_dir=cache_dir / "models").embed(text)
        assert stats.cached == 1 and np.array_equal(again, expected)


@pytest.mark.model
def test_the_onnx_session_does_not_spin_between_runs(cache_dir):
    """onnxruntime's pool threads would spin after each run, waiting for the next: a search query's
    embedding cost its server a second core's worth (lodestar/embed_onnx.py)."""
    encoder = embed_onnx.OnnxEncoder(cache_dir / "models" / export_name(DEFAULT_MODEL, "onnx-int8"))
    options = encoder._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


@pytest.mark.model
def test_loading_an_export_imports_no_torch(cache_dir):
    script = (f"import sys; from lodestar.embed import Embedder; "
              f"Embedder(cache_dir={str(cache_dir)!r}, backend='onnx-int8', models_dir={str(cache_dir / 'models')!r})"
              f".encode(['hello']); "
              f"assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_a_wrong_backend_name_is_a_clear_error(monkeypatch):
    with pytest.raises(InvalidInput, match="'tensorrt' is not one of torch, onnx, onnx-int8.*LODESTAR_EMBED_BACKEND"):
        Embedder("hashing-8", backend="tensorrt")
    monkeypatch.setenv("LODESTAR_EMBED_BACKEND", "onnx_int8")
    with pytest.raises(InvalidInput, match="'onnx_int8'"):
        Embedder("hashing-8")
    monkeypatch.setenv("LODESTAR_EMBED_BACKEND", "onnx-int8")
    hashing = Embedder("hashing-8")  # the hashing embedder has no backend: one cache key whatever the setting
    assert hashing.backend == "onnx-int8" and hashing.cache_model == "hashing-8"


def test_onnx_int8_is_the_default_and_its_exports_are_shared_by_every_data_dir(tmp_path):
    from lodestar.settings import DEFAULT_EMBED_BACKEND, Settings

    assert DEFAULT_EMBED_BACKEND == "onnx-int8" == Settings.from_env({}).embed_backend
    one, two = (Settings.from_env({"LODESTAR_DATA_DIR": str(tmp_path / d), "XDG_CACHE_HOME": str(tmp_path / "xdg")})
                for d in ("a", "b"))
    assert one.models_dir == two.models_dir == (tmp_path / "xdg" / "lodestar" / "models").resolve()
    chosen = Settings.from_env({"LODESTAR_MODELS_DIR": str(tmp_path / "models"), "XDG_CACHE_HOME": str(tmp_path)})
    assert chosen.models_dir == (tmp_path / "models").resolve()
