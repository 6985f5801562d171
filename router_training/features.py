"""Frozen-encoder features: the hidden state a sequence-classification head reads.

BERT, DeBERTa-v2/v3, RoBERTa and DistilBERT heads all read the first token's last hidden
state, so caching that vector per prompt lets a head be trained in seconds, and the trained
head drops back into the unchanged HF model (`AutoModelForSequenceClassification`) for
serving. Vectors are cached on disk per (encoder weights, max_length, prompt), in chunks
written as encoding goes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

CACHE_ENV = "CASCADE_ROUTER_CACHE"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "llm-cascade" / "router_training"
_CHUNK_ROWS = 512


def cache_root(override: str | Path | None = None) -> Path:
    if override is not None:
        return Path(override)
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR))


def encoder_fingerprint(model) -> str:
    """Hash of the encoder's weights (not the head's), so a checkpoint whose head was trained
    on cached features finds the features its encoder already produced."""
    digest = hashlib.sha256(model.config.model_type.encode())
    for name, tensor in sorted(model.base_model.state_dict().items()):
        if name.startswith("pooler."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch_uint8()).numpy())
    return digest.hexdigest()[:16]


def torch_uint8():
    import torch

    return torch.uint8


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class FeatureCache:
    """Append-only store of feature vectors keyed by prompt hash, one directory per encoder."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, np.ndarray] = {}
        for chunk in sorted(self.directory.glob("chunk-*.npz")):
            with np.load(chunk) as data:
                self._rows.update(zip(data["keys"].tolist(), data["features"], strict=True))

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def get(self, key: str) -> np.ndarray:
        return self._rows[key]

    def add(self, keys: list[str], features: np.ndarray) -> None:
        if not keys:
            return
        index = len(list(self.directory.glob("chunk-*.npz")))
        target = self.directory / f"chunk-{index:05d}-{os.getpid()}.npz"
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), features=features.astype(np.float32))
        tmp.replace(target)
        self._rows.update(zip(keys, features, strict=True))


def encode_first_token(
    model,
    tokenizer,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    desc: str = "encoding",
    pooling: str = "cls",
) -> np.ndarray:
    """[len(texts), hidden] first-token (`pooling="cls"`) or attention-masked mean
    (`pooling="mean"`) last hidden states of `model.base_model`.

    With `cache_dir`, vectors already there are reused and new ones are added chunk by chunk.
    Texts are encoded longest first, so a batch pads to similar lengths and the first
    batches show the worst-case speed.
    """
    import torch

    cache = FeatureCache(cache_dir) if cache_dir is not None else None
    keys = [_text_key(t) for t in texts]
    todo = sorted(
        {k: t for k, t in zip(keys, texts, strict=True) if cache is None or k not in cache}.items(),
        key=lambda kv: -len(kv[1]),
    )
    fresh: dict[str, np.ndarray] = {}
    pending_keys: list[str] = []
    pending: list[np.ndarray] = []
    model.eval()
    encoder = model.base_model
    with torch.inference_mode(), tqdm(total=len(todo), desc=desc, unit="prompt") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            inputs = tokenizer(
                [t for _, t in batch],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            states = encoder(**inputs).last_hidden_state
            # Copy: a view would keep the whole [batch, tokens, hidden] tensor alive.
            hidden = pool(states, inputs["attention_mask"], pooling).float().numpy().copy()
            for (key, _), vector in zip(batch, hidden, strict=True):
                fresh[key] = vector
            if cache is not None:
                pending_keys.extend(k for k, _ in batch)
                pending.append(hidden)
                if len(pending_keys) >= _CHUNK_ROWS:
                    cache.add(pending_keys, np.concatenate(pending))
                    pending_keys, pending = [], []
            bar.update(len(batch))
    if cache is not None:
        cache.add(pending_keys, np.concatenate(pending) if pending else np.empty((0, 0)))
    rows = [fresh[k] if k in fresh else cache.get(k) for k in keys]  # type: ignore[union-attr]
    return np.stack(rows).astype(np.float32)


def pool(states, attention_mask, pooling: str):
    """[batch, hidden] from [batch, tokens, hidden]: the first token, or the mean of the
    real (unpadded) tokens, which is what sentence-transformers encoders were trained on."""
    if pooling == "cls":
        return states[:, 0]
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r} (known: cls, mean)")
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def feature_cache_dir(model, max_length: int, root: Path, pooling: str = "cls") -> Path:
    suffix = "" if pooling == "cls" else f"-{pooling}"
    return root / "features" / f"{encoder_fingerprint(model)}-len{max_length}{suffix}"


def sentence_embeddings(
    embedder,
    texts: Sequence[str],
    cache_root_dir: Path | None,
    desc: str = "embedding",
    chunk_rows: int = 256,
) -> np.ndarray:
    """[len(texts), dim] normalised sentence embeddings from `embedder`
    (serve_app.routing.embedding.SentenceEmbedder: the vectors serving reads), cached on disk
    per (weights, prompt) chunk by chunk, so an interrupted run resumes where it stopped."""
    cache = (
        FeatureCache(cache_root_dir / "sentence" / embedder.fingerprint())
        if cache_root_dir is not None
        else None
    )
    keys = [_text_key(t) for t in texts]
    todo = list({k: t for k, t in zip(keys, texts, strict=True) if cache is None or k not in cache})
    by_key = dict(zip(keys, texts, strict=True))
    fresh: dict[str, np.ndarray] = {}
    with tqdm(total=len(todo), desc=desc, unit="prompt") as bar:
        for start in range(0, len(todo), chunk_rows):
            chunk = todo[start : start + chunk_rows]
            vectors = embedder.embed_batch([by_key[k] for k in chunk])
            if cache is not None:
                cache.add(chunk, vectors)
            fresh.update(zip(chunk, vectors, strict=True))
            bar.update(len(chunk))
    rows = [fresh[k] if k in fresh else cache.get(k) for k in keys]  # type: ignore[union-attr]
    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(rows).astype(np.float32)
