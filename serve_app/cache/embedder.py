"""The cache's sentence embedders: texts → unit-length float32 vectors (cosine = dot product).

Two implementations of one small protocol (`Embedder`):

- `OnnxEmbedder`: an ONNX Runtime export of a sentence-transformers model, built at set-up by
  `make models` / `cascade-prepare-embedder` (serve_app/ops/embedder_export.py) into the model
  cache. The graph itself does the mean pooling over real tokens and the L2 normalisation,
  exactly as sentence-transformers' Pooling and Normalize modules do; the directory carries the
  tokenizer and an `embedder.json` card (`ONNX_CARD`). `packaged://all-minilm-l6-v2-onnx-int8`
  (dynamic int8, per-channel) is the shipped default; `packaged://all-minilm-l6-v2-onnx` is
  the fp32 export.
- `SentenceTransformerEmbedder`: the model through sentence-transformers and torch
  (`packaged://all-minilm-l6-v2`, a hub id or a local directory).

`make_embedder(source)` picks by what the source resolves to: a directory with an
`embedder.json` card is an ONNX export, anything else goes to sentence-transformers. A
`packaged://` ONNX export that was never built fails here with `ModelNotPreparedError` naming
`make models` — never a silent fallback to torch, whose vectors (and so the right similarity
threshold) differ from the int8 ones and which is ~5x slower.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serve_app.cache.store import CacheError
from serve_app.model_sources import resolve_model_source

logger = logging.getLogger(__name__)

ONNX_CARD = "embedder.json"
"""The card of an ONNX embedder directory: format, dim, max_seq_length, pooling, provenance."""
ONNX_FORMAT = "onnx-sentence-embedding/v1"
ONNX_MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"


class EmbeddingError(CacheError):
    """The embedder failed on a query."""


class Embedder(Protocol):
    """Texts → unit-length float32 vectors; cosine similarity is then a dot product."""

    @property
    def dim(self) -> int: ...

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), dim] float32, each row of unit length. Raises EmbeddingError."""
        ...

    def embed(self, text: str) -> list[float]:
        """One text's vector, as the vector stores take it. Raises EmbeddingError."""
        ...


class _BatchEmbedder:
    """`embed` in terms of `embed_batch`."""

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def embed(self, text: str) -> list[float]:
        return self.embed_batch([text])[0].tolist()


class SentenceTransformerEmbedder(_BatchEmbedder):
    """A sentence-transformers model loaded from local files only (no hub at run time)."""

    def __init__(self, model: str, threads: int | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)

        self.source = model
        self._model = SentenceTransformer(resolve_model_source(model), local_files_only=True)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"embedding model {model} does not report its dimension")
        self._dim = int(dim)
        # HF fast tokenizers raise "Already borrowed" when one instance is used from two
        # threads at once, and two encodes on a 2-core replica are no faster than one.
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self._dim

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        try:
            with self._lock:
                vectors = self._model.encode(
                    list(texts),
                    normalize_embeddings=True,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                )
        except Exception as e:  # torch/tokenizer errors have no common base class
            raise EmbeddingError(f"embedding failed: {e}") from e
        return np.asarray(vectors, dtype=np.float32)


class OnnxEmbedder(_BatchEmbedder):
    """An ONNX sentence-embedding export run by ONNX Runtime on CPU.

    The graph takes `input_ids`, `attention_mask`, `token_type_ids` ([batch, tokens] int64)
    and returns `sentence_embedding` ([batch, dim], mean-pooled over the mask, L2-normalised).
    Thread-safe without a lock: the tokenizer is configured once and only read afterwards,
    and `InferenceSession.run` may be called concurrently.
    """

    def __init__(self, directory: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(directory)
        card = read_onnx_card(self.path)
        self.card = card
        self._dim = int(card["dim"])
        self._tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        # The packaged tokenizer.json pads and truncates to a fixed 128; sentence-transformers
        # truncates to max_seq_length and pads a batch to its longest text only.
        self._tokenizer.enable_truncation(int(card["max_seq_length"]))
        self._tokenizer.enable_padding(pad_id=int(card.get("pad_id", 0)))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(self.path / card.get("model_file", ONNX_MODEL_FILE)),
            options,
            providers=["CPUExecutionProvider"],
        )
        self._input_names = {i.name for i in self._session.get_inputs()}
        # Dynamic int8 quantises activations with one scale per call, over the whole padded
        # batch: a text's vector would depend on its batch mates (cosine 0.976 to itself
        # alone, measured). Such a model embeds one text per run, so a text has one vector.
        self._one_text_per_run = card.get("precision") == "int8"

    @property
    def dim(self) -> int:
        return self._dim

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        try:
            if self._one_text_per_run and len(texts) > 1:
                return np.concatenate([self._run([text]) for text in texts])
            return self._run(texts)
        except Exception as e:  # onnxruntime/tokenizers errors have no common base class
            raise EmbeddingError(f"embedding failed: {e}") from e

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(list(texts))
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (vectors,) = self._session.run(
            ["sentence_embedding"], {k: v for k, v in feeds.items() if k in self._input_names}
        )
        return np.asarray(vectors, dtype=np.float32)


def read_onnx_card(directory: Path) -> dict[str, Any]:
    card = json.loads((directory / ONNX_CARD).read_text())
    if card.get("format") != ONNX_FORMAT:
        raise ValueError(
            f"{directory / ONNX_CARD}: format {card.get('format')!r}, not {ONNX_FORMAT}"
        )
    return card


def is_onnx_embedder_dir(path: str | Path) -> bool:
    return (Path(path) / ONNX_CARD).is_file()


def make_embedder(source: str, threads: int | None = None) -> Embedder:
    """The embedder a configured source names (see the module docstring).

    Raises `ModelNotPreparedError` (naming `make models`) for an unbuilt `packaged://` export.
    """
    resolved = resolve_model_source(source)
    if is_onnx_embedder_dir(resolved):
        embedder: Embedder = OnnxEmbedder(resolved, threads)
        logger.info("Cache embedder: ONNX Runtime, %s (%s)", source, resolved)
    else:
        embedder = SentenceTransformerEmbedder(source, threads)
        logger.info("Cache embedder: sentence-transformers (torch), %s", source)
    return embedder
