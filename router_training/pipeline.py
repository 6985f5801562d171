"""The steps of the router lifecycle, shared by the CLI subcommands and the tests."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from router_training.calibrate import Calibration, calibrate, read_card, write_card
from router_training.config import RouterTrainingConfig
from router_training.data import (
    LabelRule,
    Outcome,
    Split,
    read_jsonl,
    router_label,
    split_by_group,
    split_from_ids,
    stratified_subset,
)
from router_training.evaluate import (
    RouterEvaluation,
    evaluate_scores,
    measure_latency,
    outcome_arrays,
    plot_cost_quality,
)
from router_training.features import cache_root
from router_training.lexical import fit_lexical_prior
from router_training.train import Scored, load_base_model, score_texts, train
from serve_app.config import RouterConfig
from serve_app.model_sources import resolve_model_source
from serve_app.routing.lexical import LexicalPrior
from serve_app.routing.operating_point import OPERATING_CURVE_KEY, OperatingCurve
from serve_app.routing.scorers import ROUTER_CARD_FILE, ActiveScorer, load_active_scorer

logger = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
CHECKPOINT_DIR = "checkpoint"


def labels_of(outcomes: Sequence[Outcome], rule: LabelRule, pass_score: float = 0.5) -> np.ndarray:
    return np.array([router_label(o, rule, pass_score) for o in outcomes], dtype=np.int64)


def load_outcomes(config: RouterTrainingConfig, seed: int) -> list[Outcome]:
    outcomes = read_jsonl(config.data.path)
    if config.data.subset_size is not None and config.data.subset_size < len(outcomes):
        outcomes = stratified_subset(
            outcomes, config.data.subset_size, seed, config.data.label_rule
        )
    return outcomes


def make_split(config: RouterTrainingConfig, outcomes: Sequence[Outcome], seed: int) -> Split:
    d = config.data
    return split_by_group(outcomes, seed, d.val_fraction, d.test_fraction, d.stratify_by_source)


def train_seed(config: RouterTrainingConfig, seed: int, run_dir: Path) -> Path:
    """Split, train and save one seed's checkpoint (HF format + router card); returns it."""
    outcomes = load_outcomes(config, seed)
    split = make_split(config, outcomes, seed)
    rule, pass_score = config.data.label_rule, config.data.pass_score
    model, tokenizer = load_base_model(resolve_model_source(config.model.base), seed)
    result = train(
        model,
        tokenizer,
        split.train,
        labels_of(split.train, rule, pass_score),
        split.val,
        labels_of(split.val, rule, pass_score),
        config.model,
        config.training,
        seed,
        _cache(config),
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPLIT_FILE).write_text(json.dumps(split.ids()) + "\n")
    checkpoint = run_dir / CHECKPOINT_DIR
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    if config.model.lexical_prior is not None:
        fit_lexical_prior(
            [o.prompt for o in split.train],
            labels_of(split.train, rule, pass_score),
            [o.prompt for o in split.val],
            config.model.lexical_prior,
        ).save(checkpoint)
    card = {
        "base_model": config.model.base,
        "mode": config.model.mode,
        "lexical_prior": (
            None if config.model.lexical_prior is None else config.model.lexical_prior.model_dump()
        ),
        "max_length": config.model.max_length,
        "label_rule": rule,
        "pass_score": pass_score,
        "seed": seed,
        "data": str(config.data.path),
        "split_file": str((run_dir / SPLIT_FILE).resolve()),
        "split_sizes": {k: len(v) for k, v in split.ids().items()},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "early_stopping": {
            "metric": config.training.early_stopping_metric,
            "best_val_score": result.best_val_score,
        },
        "score_meaning": "P(the small tier is not good enough); route large when >= threshold",
    }
    (checkpoint / ROUTER_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return checkpoint


def _cache(config: RouterTrainingConfig) -> Path:
    return cache_root(config.cache_dir)


def load_checkpoint(checkpoint: str | Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    model.eval()
    return model, tokenizer


def checkpoint_split(
    checkpoint: str | Path,
    data_path: str | Path | None = None,
    split_file: str | Path | None = None,
) -> tuple[Split, dict[str, Any]]:
    """The split a checkpoint was trained with (from its card), or one given explicitly."""
    card = read_card(checkpoint)
    data_path = data_path or card.get("data")
    split_file = split_file or card.get("split_file")
    if data_path is None or split_file is None:
        raise ValueError(f"{checkpoint}: say which data and split file to use (no card entries)")
    outcomes = read_jsonl(data_path)
    return split_from_ids(outcomes, json.loads(Path(split_file).read_text())), card


def score_checkpoint(
    checkpoint: str | Path,
    outcomes: Sequence[Outcome],
    max_length: int,
    cache_dir: Path | None,
    desc: str,
) -> np.ndarray:
    """The scores the serving router gives: the encoder's, blended with the checkpoint's
    lexical prior when it has one."""
    model, tokenizer = load_checkpoint(checkpoint)
    texts = [o.prompt for o in outcomes]
    scores = score_texts(model, tokenizer, texts, Scored(max_length, cache_dir), desc)
    prior = LexicalPrior.load(checkpoint)
    return scores if prior is None else prior.blend(scores, texts)


def evaluate_checkpoint(
    checkpoint: str | Path,
    test: Sequence[Outcome],
    card: dict[str, Any],
    random_seeds: Sequence[int],
    cache_dir: Path | None,
) -> dict[str, RouterEvaluation]:
    max_length = int(card.get("max_length", 256))
    scores = score_checkpoint(checkpoint, test, max_length, cache_dir, "scoring test")
    labels = labels_of(test, card.get("label_rule", "large_better"), card.get("pass_score", 0.5))
    return evaluate_scores(scores, test, labels, random_seeds)


def calibrate_checkpoint(
    checkpoint: str | Path,
    outcomes: Sequence[Outcome],
    cache_dir: Path | None,
    target_large_share: float | None = None,
    target_pgr: float | None = None,
    data: str = "the checkpoint's validation split",
) -> Calibration:
    """Pick the threshold on `outcomes` (`data` says which they are) and write it into the
    card with the operating curve measured on the same prompts."""
    card = read_card(checkpoint)
    scores = score_checkpoint(
        checkpoint, outcomes, int(card.get("max_length", 256)), cache_dir, "scoring calibration set"
    )
    weak, strong = outcome_arrays(outcomes)
    calibration = calibrate(scores, weak, strong, target_large_share, target_pgr)
    curve = OperatingCurve.measure(
        scores,
        weak,
        strong,
        data=f"{data} ({len(outcomes)} prompts): held out from training; the threshold was "
        "picked on it too",
        include=(calibration.threshold,),
    )
    write_card(checkpoint, calibration, **{OPERATING_CURVE_KEY: curve.to_card()})
    return calibration


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, probe: str) -> dict[str, Any]:
    """Copy a checkpoint (weights, tokenizer, card) to `out_dir`, then prove the serving
    router loads it as a classifier and scores `probe` as the trained model does.

    The copy is staged beside `out_dir` and renamed into place, so a running router that
    reloads the directory never reads a half-written export.
    """
    source, out = Path(checkpoint), Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        serving = _serving_scorer(staging, read_card(source))
        if serving.name != "classifier":
            reason = serving.fallback_reason
            raise RuntimeError(f"the serving router cannot load {source}: {reason}")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    serving = _serving_scorer(out, read_card(out))
    (probe_score,) = serving.scorer.score_batch([probe])
    return {
        "checkpoint": str(out),
        "scorer": serving.name,
        "threshold": serving.threshold,
        "probe_score": probe_score,
        "probe_tier": serving.decide(probe_score, latency_ms=0.0).tier,
    }


def _serving_scorer(checkpoint: Path, card: dict[str, Any]) -> ActiveScorer:
    """The scorer and threshold the serving router loads from `checkpoint` (Ray-free: the same
    `load_active_scorer` the Router deployment calls)."""
    config = {"checkpoint": str(checkpoint), "max_length": card.get("max_length", 256)}
    return load_active_scorer(RouterConfig.model_validate(config))


def summarise(per_seed: dict[int, dict[str, RouterEvaluation]]) -> dict[str, Any]:
    """Per-seed and mean APGR / CPT50 / CPT80 / ROC AUC of every router."""
    table: dict[str, Any] = {}
    names = next(iter(per_seed.values())).keys()
    for name in names:
        rows = {seed: evals[name].summary() for seed, evals in per_seed.items()}
        mean = {
            key: (
                None
                if any(r[key] is None for r in rows.values())
                else float(np.mean([r[key] for r in rows.values()]))
            )
            for key in next(iter(rows.values()))
        }
        std = {
            key: (
                None
                if any(r[key] is None for r in rows.values())
                else float(np.std([r[key] for r in rows.values()]))
            )
            for key in next(iter(rows.values()))
        }
        table[name] = {"per_seed": rows, "mean": mean, "std": std}
    return table


def markdown_table(summary: dict[str, Any]) -> str:
    lines = [
        "| router | seed | APGR | CPT(50%) | CPT(80%) | ROC AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(row: dict[str, float | None]) -> str:
        auc = "–" if row["roc_auc"] is None else f"{row['roc_auc']:.3f}"
        return f"{row['apgr']:.3f} | {row['cpt50_pct']:.1f}% | {row['cpt80_pct']:.1f}% | {auc}"

    for name, entry in summary.items():
        for seed, row in entry["per_seed"].items():
            lines.append(f"| {name} | {seed} | {fmt(row)} |")
        lines.append(f"| **{name}** | **mean** | {fmt(entry['mean'])} |")
    return "\n".join(lines)


def evaluation_json(evals: dict[str, RouterEvaluation]) -> dict[str, Any]:
    return {
        name: {"summary": e.summary(), "runs": [m.as_dict() for m in e.metrics]}
        for name, e in evals.items()
    }


def run_all(config: RouterTrainingConfig, latency: bool = True) -> dict[str, Any]:
    """train → evaluate → calibrate → export for every seed, then the summary table."""
    out = Path(config.output_dir)
    per_seed: dict[int, dict[str, RouterEvaluation]] = {}
    report: dict[str, Any] = {"config": config.model_dump(), "seeds": {}}
    for seed in config.training.seeds:
        run_dir = out / f"seed-{seed}"
        checkpoint = train_seed(config, seed, run_dir)
        split, card = checkpoint_split(checkpoint)
        evals = evaluate_checkpoint(
            checkpoint, split.test, card, config.evaluation.random_seeds, _cache(config)
        )
        per_seed[seed] = evals
        plot_cost_quality(evals, run_dir / "cost_quality.png", f"held-out prompts, seed {seed}")
        c = config.calibration
        calibration = calibrate_checkpoint(
            checkpoint, split.val, _cache(config), c.target_large_share, c.target_pgr
        )
        write_card(checkpoint, calibration, evaluation=evals["router"].summary())
        exported = export_checkpoint(checkpoint, run_dir / "export", split.test[0].prompt)
        seed_report = {
            "evaluation": evaluation_json(evals),
            "calibration": asdict(calibration),
            "export": exported,
            "split_sizes": card["split_sizes"],
        }
        if latency and config.evaluation.latency_requests > 0:
            seed_report["latency_ms"] = measure_latency(
                exported["checkpoint"],
                [o.prompt for o in split.test],
                card["max_length"],
                config.evaluation.latency_requests,
                config.evaluation.latency_batch_size,
            )
        (run_dir / "evaluation.json").write_text(json.dumps(seed_report, indent=2) + "\n")
        report["seeds"][seed] = seed_report
    report["summary"] = summarise(per_seed)
    merged = _merge_seeds(per_seed)
    report["curve_png"] = str(
        plot_cost_quality(
            merged,
            out / "cost_quality.png",
            f"held-out prompts, mean of {len(per_seed)} seeds",
        )
    )
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown_table(report["summary"]) + "\n")
    return report


def _merge_seeds(per_seed: dict[int, dict[str, RouterEvaluation]]) -> dict[str, RouterEvaluation]:
    """One evaluation per router holding every seed's runs, for the mean curve."""
    names = next(iter(per_seed.values())).keys()
    return {
        name: RouterEvaluation(
            name, [m for evals in per_seed.values() for m in evals[name].metrics]
        )
        for name in names
    }
