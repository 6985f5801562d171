"""The sentence embedding the router reads: all-MiniLM-L6-v2, mean-pooled and L2-normalised.

It is the embedding the semantic cache computes for its lookups (serve_app.cache.deployment,
`encode(..., normalize_embeddings=True)` with the same packaged model), so the gateway can
embed a request once and hand the vector to both. Ray-free; torch and sentence-transformers
are imported only when an embedder is built.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from serve_app.model_sources import resolve_model_source

DEFAULT_EMBEDDING_MODEL = "packaged://all-minilm-l6-v2"
EMBEDDING_DIM = 384


class SentenceEmbedder:
    """Normalised sentence-transformers embeddings from local files only (no hub)."""

    def __init__(self, model: str = DEFAULT_EMBEDDING_MODEL, batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        self.source = model
        self.path = Path(resolve_model_source(model))
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(self.path), local_files_only=True, device="cpu")
        # HF fast tokenizers raise "Already borrowed" when used from two threads at once.
        self._lock = threading.Lock()

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32, each row of unit length."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return np.asarray(vectors, dtype=np.float32)

    def fingerprint(self) -> str:
        """Hash of the weights file: embeddings cached under it stay valid while it does."""
        digest = hashlib.sha256()
        for name in sorted(p.name for p in self.path.glob("*.safetensors")):
            digest.update((self.path / name).read_bytes())
        return digest.hexdigest()[:16]
