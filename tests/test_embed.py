"""The real all-MiniLM-L6-v2, loaded offline, and its content-hash cache."""

import numpy as np

from lodestar.embed import Embedder


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


def test_duplicate_texts_are_encoded_once(tmp_path):
    vectors, stats = Embedder(cache_dir=tmp_path).embed(["same", "same", "other"])
    assert stats.encoded == 2 and np.allclose(vectors[0], vectors[1])


def test_a_run_with_every_text_cached_does_not_load_the_model(tmp_path):
    first = Embedder(cache_dir=tmp_path)
    first.embed(["cached text"])
    assert first.dimension == 384  # learnt from the model once, kept in the cache
    again = Embedder(cache_dir=tmp_path)
    vectors, stats = again.embed(["cached text"])
    assert stats.cached == 1 and again.dimension == 384 and vectors.shape == (1, 384)
    assert again._model is None  # nothing needed the model
