"""Train a sequence classifier to predict P(the small model is not good enough).

Two modes share the model, the loss, the early stopping and the export:
- `head`: the encoder is frozen; its first-token states are cached once (features.py) and
  only the classification head (pooler + classifier) is trained — seconds per epoch on CPU;
- `finetune`: every weight is trained end to end on tokenised prompts (GPU territory for
  DeBERTa-v3-base on 10k+ prompts; on CPU use a small encoder, a subset and a short
  `max_length`).
Class imbalance is handled by class weights in the cross-entropy; the epoch with the best
validation score is kept; every seed is fixed.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from router_training.config import ModelConfig, TrainingConfig
from router_training.data import Outcome
from router_training.features import encode_first_token, feature_cache_dir
from router_training.heads import head_forward, head_parameters, supports_head_training
from router_training.metrics import roc_auc, router_metrics

logger = logging.getLogger(__name__)

ID2LABEL = {0: "small", 1: "large"}


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_base_model(source: str, seed: int):
    """(model, tokenizer) with a fresh 2-label head; the seed fixes the head's init."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
    )
    return model, tokenizer


@dataclass
class TrainResult:
    best_epoch: int
    best_val_score: float
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Scored:
    """What the scorer needs to know about a model to score texts fast."""

    max_length: int
    cache_root: Path | None
    batch_size: int = 32


def score_texts(model, tokenizer, texts: Sequence[str], scored: Scored, desc: str) -> np.ndarray:
    """P(label 1) for each text; through cached encoder features when the head allows it."""
    model.eval()
    if supports_head_training(model):
        features = _features(model, tokenizer, texts, scored, desc)
        with torch.inference_mode():
            logits = head_forward(model, torch.from_numpy(features))
        return _positive_probability(logits)
    probs = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), scored.batch_size), desc=desc, unit="batch"):
            inputs = tokenizer(
                list(texts[start : start + scored.batch_size]),
                truncation=True,
                max_length=scored.max_length,
                padding=True,
                return_tensors="pt",
            )
            probs.append(_positive_probability(model(**inputs).logits))
    return np.concatenate(probs) if probs else np.empty(0)


def _features(model, tokenizer, texts: Sequence[str], scored: Scored, desc: str) -> np.ndarray:
    cache_dir = (
        feature_cache_dir(model, scored.max_length, scored.cache_root)
        if scored.cache_root is not None
        else None
    )
    return encode_first_token(
        model, tokenizer, texts, scored.max_length, scored.batch_size, cache_dir, desc
    )


def _positive_probability(logits: torch.Tensor) -> np.ndarray:
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0]).float().numpy()
    return torch.softmax(logits.float(), dim=-1)[:, 1].numpy()


def class_weights(labels: np.ndarray, how: str) -> torch.Tensor:
    if how == "none":
        return torch.ones(2)
    counts = np.bincount(labels, minlength=2).astype(float)
    if (counts == 0).any():
        raise ValueError(f"training labels need both classes, got counts {counts.tolist()}")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)


def validation_score(
    metric: str, probs: np.ndarray, labels: np.ndarray, val: Sequence[Outcome], loss: float
) -> float:
    """Higher is better."""
    if metric == "loss":
        return -loss
    if metric == "roc_auc":
        return roc_auc(probs, labels) or 0.0
    weak = [o.small_score for o in val]
    strong = [o.large_score for o in val]
    return router_metrics(probs, weak, strong, labels).apgr


def train(
    model,
    tokenizer,
    train_set: Sequence[Outcome],
    train_labels: np.ndarray,
    val_set: Sequence[Outcome],
    val_labels: np.ndarray,
    model_config: ModelConfig,
    config: TrainingConfig,
    seed: int,
    cache_root: Path | None,
) -> TrainResult:
    """Train in place; the model ends with the weights of its best validation epoch."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    scored = Scored(model_config.max_length, cache_root, config.encode_batch_size)
    if model_config.mode == "head":
        return _train_head(
            model, tokenizer, train_set, train_labels, val_set, val_labels, config, seed, scored
        )
    return _train_finetune(
        model, tokenizer, train_set, train_labels, val_set, val_labels, config, seed, scored
    )


def _train_head(
    model, tokenizer, train_set, train_labels, val_set, val_labels, config, seed, scored
) -> TrainResult:
    train_x = torch.from_numpy(
        _features(model, tokenizer, [o.prompt for o in train_set], scored, "encoding train")
    )
    val_x = torch.from_numpy(
        _features(model, tokenizer, [o.prompt for o in val_set], scored, "encoding val")
    )
    params = head_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_labels, config.class_weighting))
    y = torch.from_numpy(train_labels).long()
    generator = torch.Generator().manual_seed(seed)

    def run_epoch() -> float:
        model.train()
        total = 0.0
        for batch in torch.randperm(len(y), generator=generator).split(config.batch_size):
            loss = loss_fn(head_forward(model, train_x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / len(y)

    def evaluate() -> tuple[np.ndarray, float]:
        model.eval()
        with torch.inference_mode():
            logits = head_forward(model, val_x)
            loss = float(loss_fn(logits, torch.from_numpy(val_labels).long()))
        return _positive_probability(logits), loss

    return _early_stopping_loop(model, run_epoch, evaluate, val_set, val_labels, config)


def _train_finetune(
    model, tokenizer, train_set, train_labels, val_set, val_labels, config, seed, scored
) -> TrainResult:
    for p in model.parameters():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_labels, config.class_weighting))
    texts = [o.prompt for o in train_set]
    y = torch.from_numpy(train_labels).long()
    generator = torch.Generator().manual_seed(seed)
    nocache = Scored(scored.max_length, None, scored.batch_size)

    def run_epoch() -> float:
        model.train()
        total = 0.0
        batches = torch.randperm(len(y), generator=generator).split(config.batch_size)
        for batch in tqdm(batches, desc="fine-tuning", unit="batch", leave=False):
            inputs = tokenizer(
                [texts[i] for i in batch.tolist()],
                truncation=True,
                max_length=scored.max_length,
                padding=True,
                return_tensors="pt",
            )
            loss = loss_fn(model(**inputs).logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        return total / len(y)

    def evaluate() -> tuple[np.ndarray, float]:
        probs = score_texts(model, tokenizer, [o.prompt for o in val_set], nocache, "val")
        eps = 1e-7
        weights = class_weights(train_labels, config.class_weighting).numpy()[val_labels]
        p = np.clip(np.where(val_labels == 1, probs, 1 - probs), eps, 1)
        return probs, float((-np.log(p) * weights).sum() / weights.sum())

    return _early_stopping_loop(model, run_epoch, evaluate, val_set, val_labels, config)


def _early_stopping_loop(model, run_epoch, evaluate, val_set, val_labels, config) -> TrainResult:
    best_state = copy.deepcopy(model.state_dict())
    result = TrainResult(best_epoch=0, best_val_score=-np.inf)
    stale = 0
    with tqdm(range(1, config.max_epochs + 1), desc="training", unit="epoch") as epochs:
        for epoch in epochs:
            train_loss = run_epoch()
            probs, val_loss = evaluate()
            score = validation_score(
                config.early_stopping_metric, probs, val_labels, val_set, val_loss
            )
            result.history.append(
                {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val": score}
            )
            epochs.set_postfix(train_loss=f"{train_loss:.4f}", val=f"{score:.4f}")
            if score > result.best_val_score:
                result.best_epoch, result.best_val_score, stale = epoch, score, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= config.patience_epochs:
                    break
    model.load_state_dict(best_state)
    model.eval()
    logger.info(
        "Best epoch %d of %d: val %s %.4f",
        result.best_epoch,
        len(result.history),
        config.early_stopping_metric,
        result.best_val_score,
    )
    return result
