"""The cache's ONNX embedders against sentence-transformers (issue 20, part 2).

The exports are the ones `make models` builds (serve_app.ops.embedder_export), prepared here
on first use.
The bounds are the ones measured (docs/benchmarks.md, "Cache embedder"): fp32 ONNX reproduces
sentence-transformers' vectors to rounding; per-channel int8 stays >= 0.98 cosine of them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from serve_app.cache.deployment import SemanticCache, embedding_text
from serve_app.cache.embedder import (
    ONNX_CARD,
    Embedder,
    OnnxEmbedder,
    SentenceTransformerEmbedder,
    make_embedder,
    read_onnx_card,
)
from serve_app.config import CacheConfig
from serve_app.model_sources import PACKAGED_SCHEME, ModelNotPreparedError
from serve_app.ops.embedder_export import (
    CHECK_TEXTS,
    MIN_COSINE,
    MINILM_ONNX,
    MINILM_ONNX_INT8,
    MINILM_SOURCE,
)
from serve_app.ops.embedder_export import prepare_embedder as prepare

# Real prompts: pair-set questions, a code question, a long multi-sentence one, non-ASCII.
PROMPTS = [
    "What is the capital of Australia?",
    "what's the capital of australia",
    "Is it safe to take ibuprofen with alcohol?",
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Summarise the causes of the First World War in three bullet points. Mention the alliance "
    "system, militarism and the assassination in Sarajevo, and keep each point under twenty "
    "words.",
    "Wie spät ist es in Tokio, wenn es in Berlin 15 Uhr ist?",
    "x",
]
BOUNDS = {MINILM_ONNX: MIN_COSINE["fp32"], MINILM_ONNX_INT8: MIN_COSINE["int8"]}


@pytest.fixture(scope="module")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MINILM_SOURCE, threads=1)


@pytest.fixture(scope="module", params=[MINILM_ONNX, MINILM_ONNX_INT8])
def onnx_name(request: pytest.FixtureRequest) -> str:
    prepare(request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def onnx(onnx_name: str) -> OnnxEmbedder:
    embedder = make_embedder(f"{PACKAGED_SCHEME}{onnx_name}", threads=1)
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


def test_onnx_vectors_agree_with_sentence_transformers(
    onnx_name: str, onnx: OnnxEmbedder, reference: SentenceTransformerEmbedder
) -> None:
    texts = [embedding_text(p) for p in PROMPTS] + list(CHECK_TEXTS)

    got, want = onnx.embed_batch(texts), reference.embed_batch(texts)

    cosines = (got * want).sum(axis=1)
    assert cosines.min() >= BOUNDS[onnx_name], dict(zip(texts, cosines.round(4), strict=True))


def test_onnx_vectors_are_unit_float32_rows(onnx: OnnxEmbedder) -> None:
    vectors = onnx.embed_batch(PROMPTS)

    assert onnx.dim == 384
    assert vectors.dtype == np.float32 and vectors.shape == (len(PROMPTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert onnx.embed_batch([]).shape == (0, 384)
    assert onnx.embed(PROMPTS[0]) == pytest.approx(vectors[0].tolist(), abs=1e-5)


def test_a_texts_vector_does_not_depend_on_its_batch(onnx: OnnxEmbedder) -> None:
    # fp32: short prompts are padded to the longest in the batch and the mask keeps the
    # padding out of the mean. int8: activations are quantised per run, so it runs one text
    # at a time. Either way the router and the cache can share one vector per text.
    single = np.stack([onnx.embed_batch([p])[0] for p in PROMPTS])
    batched = onnx.embed_batch(PROMPTS)

    assert (single * batched).sum(axis=1).min() >= 0.9999


def test_prompts_longer_than_the_models_window_are_truncated_like_sentence_transformers(
    onnx_name: str, onnx: OnnxEmbedder, reference: SentenceTransformerEmbedder
) -> None:
    long_prompt = " ".join(PROMPTS * 20)  # well over 256 tokens

    cosine = float(onnx.embed_batch([long_prompt])[0] @ reference.embed_batch([long_prompt])[0])

    assert cosine >= BOUNDS[onnx_name]


def test_onnx_embedder_is_safe_to_share_between_threads(onnx: OnnxEmbedder) -> None:
    expected = {p: onnx.embed_batch([p])[0] for p in PROMPTS}
    worst: list[float] = []

    def work() -> None:
        for prompt in PROMPTS * 3:
            worst.append(float(onnx.embed_batch([prompt])[0] @ expected[prompt]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(worst) == 4 * 3 * len(PROMPTS) and min(worst) > 0.9999


def test_the_export_card_records_what_was_built_and_checked(
    onnx_name: str, onnx: OnnxEmbedder
) -> None:
    card = read_onnx_card(onnx.path)

    assert card["source"] == MINILM_SOURCE and card["dim"] == 384
    assert card["max_seq_length"] == 256 and card["pooling"] == "mean" and card["normalized"]
    assert card["precision"] == ("int8" if onnx_name == MINILM_ONNX_INT8 else "fp32")
    assert card["min_cosine_to_sentence_transformers"] >= BOUNDS[onnx_name]


def test_the_shipped_embedder_is_the_int8_export() -> None:
    assert CacheConfig().embedding_model == f"{PACKAGED_SCHEME}{MINILM_ONNX_INT8}"


def test_a_sentence_transformers_source_still_gets_torch() -> None:
    embedder: Embedder = make_embedder(MINILM_SOURCE, threads=1)

    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.embed_batch(["hello"]).shape == (1, 384)


def test_a_missing_export_fails_naming_make_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CASCADE_MODEL_CACHE", str(tmp_path))
    source = f"{PACKAGED_SCHEME}{MINILM_ONNX_INT8}"

    with pytest.raises(ModelNotPreparedError, match="make models"):
        make_embedder(source)
    # The replica fails at start, rather than silently serving torch's vectors.
    with pytest.raises(ModelNotPreparedError, match="make models"):
        SemanticCache(CacheConfig(embedding_model=source))


def test_a_half_written_export_is_not_served(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CASCADE_MODEL_CACHE", str(tmp_path))
    (tmp_path / MINILM_ONNX_INT8).mkdir()
    (tmp_path / MINILM_ONNX_INT8 / ONNX_CARD).write_text("{}")  # no READY marker

    with pytest.raises(ModelNotPreparedError):
        make_embedder(f"{PACKAGED_SCHEME}{MINILM_ONNX_INT8}")
