"""The real all-MiniLM-L6-v2, loaded offline, and its content-hash cache; the hashing embedder of
the fast test tier, which never loads it."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lodestar.embed import Embedder, _load_transformer
from lodestar.errors import InvalidInput
from lodestar.settings import Settings


@pytest.mark.model
def test_real_model_meaning_and_cache(tmp_path):
    embedder = Embedder(cache_dir=tmp_path)
    texts = ["waterproof hiking boots", "trail boots for wet mountain walks", "espresso machine for the kitchen"]
    vectors, stats = embedder.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert (stats.encoded, stats.cached) == (3, 0)

    again, stats = Embedder(cache_dir=tmp_path).embed([texts[2], "a new text", texts[0]])
    assert (stats.encoded, stats.cached) == (1, 2)
    assert np.allclose(again[0], vectors[2]) and np.allclose(again[2], vectors[0])


@pytest.mark.model
def test_duplicate_texts_are_encoded_once(tmp_path):
    vectors, stats = Embedder(cache_dir=tmp_path).embed(["same", "same", "other"])
    assert stats.encoded == 2 and np.allclose(vectors[0], vectors[1])


@pytest.mark.model
def test_a_run_with_every_text_cached_does_not_load_the_model(tmp_path):
    first = Embedder(cache_dir=tmp_path)
    first.embed(["cached text"])
    assert first.dimension == 384  # learnt from the model once, kept in the cache
    again = Embedder(cache_dir=tmp_path)
    vectors, stats = again.embed(["cached text"])
    assert stats.cached == 1 and again.dimension == 384 and vectors.shape == (1, 384)
    assert again._model is None  # nothing needed the model


HASHING_TEXTS = ["Waterproof hiking boots", "hiking boots for wet trails", "espresso machine for the kitchen", ""]
_IN_A_FRESH_PROCESS = """
import json, sys
from lodestar.embed import Embedder
vectors = Embedder("hashing-64").encode(json.loads(sys.argv[1]))
assert "torch" not in sys.modules and "sentence_transformers" not in sys.modules
print(json.dumps(vectors.tolist()))
"""


@pytest.fixture()
def no_model_load():
    """Fails the test if it loads a sentence-transformers model that this process had not loaded."""
    loaded = _load_transformer.cache_info().currsize
    yield
    assert _load_transformer.cache_info().currsize == loaded, "the hashing embedder loaded a real model"


def test_hashing_vectors_are_unit_and_shared_words_are_closer(no_model_load):
    vectors = Embedder("hashing-64").encode(HASHING_TEXTS)
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert np.allclose(Embedder("hashing-64").encode(["hiking-BOOTS, waterproof!"])[0], vectors[0])  # case, punctuation


def test_hashing_of_a_text_without_words_is_a_fixed_unit_vector(no_model_load):
    vectors = Embedder("hashing-16").encode(["", "  ", "?!"])
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert np.array_equal(vectors[0], vectors[1]) and np.array_equal(vectors[0], vectors[2])


def test_hashing_is_the_same_in_every_process_and_imports_no_torch(no_model_load):
    fresh = subprocess.run([sys.executable, "-c", _IN_A_FRESH_PROCESS, json.dumps(HASHING_TEXTS)],
                           capture_output=True, text=True, timeout=120, check=True)
    assert np.array_equal(np.asarray(json.loads(fresh.stdout), dtype=np.float32),
                          Embedder("hashing-64").encode(HASHING_TEXTS))


def test_hashing_goes_through_the_embedder_api_and_its_cache(tmp_path, no_model_load):
    settings = Settings.from_env({"LODESTAR_EMBED_MODEL": "hashing-64", "LODESTAR_DATA_DIR": str(tmp_path)})
    embedder = Embedder(settings.embed_model, cache_dir=tmp_path)
    embedder.prewarm().join(timeout=5)
    embedder.warm_up()
    assert embedder.model_name == "hashing-64" and embedder.dimension == 64
    vectors, stats = embedder.embed(HASHING_TEXTS[:3])
    assert (stats.encoded, stats.cached) == (3, 0)
    again = Embedder("hashing-64", cache_dir=tmp_path)
    cached, stats = again.embed(HASHING_TEXTS[:3])
    assert (stats.encoded, stats.cached) == (0, 3) and np.array_equal(cached, vectors)
    assert again.dimension == 64 and again._model is None  # known from the cache
    assert again.embed([])[0].shape == (0, 64)


@pytest.mark.parametrize("name", ["hashing-", "hashing-x", "hashing-0", "hashing--8"])
def test_a_malformed_hashing_name_says_how_to_write_it(name):
    with pytest.raises(InvalidInput, match="hashing"):
        Embedder(name).encode(["text"])
