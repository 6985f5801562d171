"""Quality fallback evaluation, `offline` part: router alone vs router + judge on MMLU outcomes.

RouteLLM's MMLU outcomes (correctness per question, no answer texts) train a judge with
router_training; router alone and router + fallback are compared on the router's held-out
split: escalation rate, small-tier failures caught, good answers wrongly escalated, and the
cost-quality point. `python -m benchmarks.fallback_evaluation --parts offline` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger("fallback_evaluation")

JUDGE_VISIBILITY = (
    "The MMLU outcome files record whether each model answered correctly, not what it "
    "answered. The judge trained here therefore reads the question only (judge_text(prompt, "
    "'') == prompt): it predicts which questions the small model gets wrong, like a second "
    "router, and cannot see a wrong answer. The structural checks (empty, truncated, "
    "repetition, refusal) and the logprob confidence check need the answer and its token "
    "log-probabilities, so they cannot be evaluated on this data at all; the live `checks` "
    "part measures them on real small-tier answers. The oracle checker is the upper bound of "
    "a checker that recognises every wrong small answer."
)


# ------------------------------------------------------------------ helpers (share_of: live too)


def _tier_prices(config_path: Path) -> dict[str, Any]:
    from serve_app.accounting.cost_model import TierPrice
    from serve_app.config import CascadeConfig

    raw = yaml.safe_load(config_path.read_text())
    args = raw["applications"][0]["args"]
    config = CascadeConfig.model_validate(args)
    return {name: TierPrice.from_config(config.tiers[name].cost) for name in ("small", "large")}


def share_of(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


# ------------------------------------------------------------------ offline (MMLU)


def _load_outcomes(data: Path, routellm_dir: Path):
    from router_training.data import read_jsonl, read_routellm, write_jsonl

    if not data.is_file():
        logger.warning("%s missing; importing %s", data, routellm_dir)
        write_jsonl(read_routellm([routellm_dir]), data)
    return read_jsonl(data)


def _train_judge(outcomes, out: Path, quick: bool, seed: int):
    """Judge split from correctness → router_training's trainer → checkpoint."""
    from router_training.config import (
        DataConfig,
        EvaluationConfig,
        ModelConfig,
        RouterTrainingConfig,
        TrainingConfig,
    )
    from router_training.data import write_jsonl
    from router_training.judge_data import judge_outcomes_from_correctness
    from router_training.pipeline import train_seed

    judge_data = out / "judge_mmlu.jsonl"
    write_jsonl(judge_outcomes_from_correctness(outcomes), judge_data)
    config = RouterTrainingConfig(
        data=DataConfig(
            path=str(judge_data),
            label_rule="small_fails",
            val_fraction=0.1,  # the router's fractions: the same question split
            test_fraction=0.2,
        ),
        model=ModelConfig(base="packaged://all-minilm-l6-v2", mode="head", max_length=256),
        training=TrainingConfig(
            seeds=[seed],
            max_epochs=40 if quick else 200,
            batch_size=256,
            learning_rate=1e-3,
            patience_epochs=10 if quick else 20,
            early_stopping_metric="roc_auc",
        ),
        evaluation=EvaluationConfig(latency_requests=0),
        output_dir=str(out / "judge_mmlu"),
    )
    return train_seed(config, seed, out / "judge_mmlu" / f"seed-{seed}")


def _router_scores(router_checkpoint: Path | None, outcomes) -> tuple[np.ndarray, float, str]:
    from router_training.features import cache_root
    from router_training.pipeline import score_checkpoint
    from serve_app.routing.router import Router
    from serve_app.routing.scorers import HeuristicScorer

    if router_checkpoint is not None and router_checkpoint.is_dir():
        router = Router({"checkpoint": str(router_checkpoint)})
        if router.scorer_name == "classifier":
            scores = score_checkpoint(
                router_checkpoint, outcomes, 256, cache_root(), "scoring (router)"
            )
            return scores, router.threshold, f"classifier {router_checkpoint}"
    scores = np.array(HeuristicScorer().score_batch([o.prompt for o in outcomes]))
    return scores, 0.5, "heuristic"


def _prompt_tokens(outcomes) -> np.ndarray:
    from transformers import AutoTokenizer

    from serve_app.model_sources import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("packaged://all-minilm-l6-v2"))
    encoded = tokenizer([o.prompt for o in outcomes], add_special_tokens=False)["input_ids"]
    return np.array([len(ids) for ids in encoded], dtype=np.int64)


class CascadeOutcomes:
    """Per-request quality and cost of routing (and escalating) the held-out prompts."""

    def __init__(self, outcomes, prompt_tokens: np.ndarray, completion_tokens: int, prices):
        self.small_ok = np.array([o.small_score for o in outcomes]) >= 0.5
        self.small_score = np.array([o.small_score for o in outcomes])
        self.large_score = np.array([o.large_score for o in outcomes])
        self.small_usd = np.array(
            [prices["small"].cost_usd(int(p), completion_tokens) for p in prompt_tokens]
        )
        self.large_usd = np.array(
            [prices["large"].cost_usd(int(p), completion_tokens) for p in prompt_tokens]
        )

    def point(self, to_large: np.ndarray, escalate: np.ndarray | None = None) -> dict[str, Any]:
        """Router sends `to_large` to the large tier; `escalate` re-asks small-routed ones."""
        to_small = ~to_large
        escalate = np.zeros_like(to_large) if escalate is None else (escalate & to_small)
        final_large = to_large | escalate
        quality = np.where(final_large, self.large_score, self.small_score)
        usd = np.where(to_large, self.large_usd, self.small_usd) + np.where(
            escalate, self.large_usd, 0.0
        )
        small_wrong = to_small & ~self.small_ok
        small_right = to_small & self.small_ok
        return {
            "quality": float(quality.mean()),
            "usd_per_1k_requests": float(usd.mean() * 1000),
            "routed_large_share": float(to_large.mean()),
            "escalation_rate_of_small_routed": share_of(int(escalate.sum()), int(to_small.sum())),
            "escalation_rate_of_all": float(escalate.mean()),
            "small_failures_caught": share_of(
                int((escalate & small_wrong).sum()), int(small_wrong.sum())
            ),
            "good_small_answers_wrongly_escalated": share_of(
                int((escalate & small_right).sum()), int(small_right.sum())
            ),
            "escalations_that_fixed_the_answer": share_of(
                int((escalate & small_wrong & (self.large_score >= 0.5)).sum()),
                int(escalate.sum()),
            ),
        }


def _threshold_for_share(scores: np.ndarray, share: float) -> float:
    """Threshold at which `share` of `scores` are >= it."""
    if len(scores) == 0:
        return 1.0
    return float(np.quantile(scores, 1 - share))


def _router_quality_at_cost(cascade: CascadeOutcomes, router_scores, usd_per_1k: float):
    """Quality of the router alone at the threshold whose cost matches `usd_per_1k`."""
    best = None
    for threshold in np.unique(np.concatenate([router_scores, [1.01]])):
        point = cascade.point(router_scores >= threshold)
        if point["usd_per_1k_requests"] <= usd_per_1k and (
            best is None or point["quality"] > best["quality"]
        ):
            best = {**point, "router_threshold": float(threshold)}
    return best


def run_offline(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from router_training.data import split_from_ids
    from router_training.features import cache_root
    from router_training.metrics import roc_auc
    from router_training.pipeline import SPLIT_FILE, export_checkpoint, score_checkpoint
    from serve_app.quality.judge import AnswerJudge
    from serve_app.routing.scorers import ROUTER_CARD_FILE

    outcomes = _load_outcomes(Path(args.data), Path(args.routellm_dir))
    checkpoint = _train_judge(outcomes, out, args.quick, args.seed)
    split_ids = json.loads((checkpoint.parent / SPLIT_FILE).read_text())
    split = split_from_ids(outcomes, split_ids)
    router_checkpoint = Path(args.router_checkpoint) if args.router_checkpoint else None
    same_split = None
    if router_checkpoint is not None and (router_checkpoint / ROUTER_CARD_FILE).is_file():
        card = json.loads((router_checkpoint / ROUTER_CARD_FILE).read_text())
        router_split = Path(card.get("split_file", ""))
        if router_split.is_file():
            same_split = json.loads(router_split.read_text()) == split_ids

    val, test = split.val, split.test
    judge_val = score_checkpoint(checkpoint, val, 256, cache_root(), "scoring val (judge)")
    judge_test = score_checkpoint(checkpoint, test, 256, cache_root(), "scoring test (judge)")
    router_val, router_threshold, router_name = _router_scores(router_checkpoint, val)
    router_test, _, _ = _router_scores(router_checkpoint, test)

    # The judge's threshold: escalate `target` of the answers the router leaves on the small
    # tier, chosen on the validation split (never on the test split).
    small_val = router_val < router_threshold
    judge_threshold = _threshold_for_share(judge_val[small_val], args.target_escalation)
    export = out / "judge_mmlu" / "export"
    export_checkpoint(checkpoint, export, test[0].prompt)
    card_path = export / ROUTER_CARD_FILE
    card = json.loads(card_path.read_text())
    card["threshold"] = judge_threshold
    card["threshold_target"] = f"escalate {args.target_escalation:.0%} of small-routed val answers"
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    served = AnswerJudge(export)  # what the ingress does with quality.judge_checkpoint

    prompt_tokens = _prompt_tokens(test)
    reports: dict[str, Any] = {}
    for price_name, config in (("local", args.config), ("production", args.production_config)):
        prices = _tier_prices(Path(config))
        cascade = CascadeOutcomes(test, prompt_tokens, args.completion_tokens, prices)
        to_large = router_test >= router_threshold
        judge_says = judge_test >= judge_threshold
        oracle = ~cascade.small_ok
        with_fallback = cascade.point(to_large, judge_says)
        reports[price_name] = {
            "small_only": cascade.point(np.zeros(len(test), dtype=bool)),
            "large_only": cascade.point(np.ones(len(test), dtype=bool)),
            "router_alone": cascade.point(to_large),
            "router_plus_judge_fallback": with_fallback,
            "router_alone_at_same_cost": _router_quality_at_cost(
                cascade, router_test, with_fallback["usd_per_1k_requests"]
            ),
            "router_plus_oracle_checker": cascade.point(to_large, oracle),
            "judge_threshold_sweep": [
                {"judge_threshold": float(t), **cascade.point(to_large, judge_test >= t)}
                for t in np.quantile(judge_test[~to_large], np.linspace(0, 1, 11))
            ],
            "router_threshold_sweep": [
                {"router_threshold": float(t), **cascade.point(router_test >= t)}
                for t in np.quantile(router_test, np.linspace(0, 1, 21))
            ],
        }
    small_routed = router_test < router_threshold
    failed = np.array([o.small_score < 0.5 for o in test])
    report = {
        "what_the_judge_sees": JUDGE_VISIBILITY,
        "data": str(args.data),
        "prompts": {"train": len(split.train), "val": len(val), "test": len(test)},
        "judge_split_equals_router_split": same_split,
        "router": {"scorer": router_name, "threshold": router_threshold},
        "judge": {
            "checkpoint": str(export),
            "threshold": judge_threshold,
            "loaded_by_serving_judge": served.available,
            "roc_auc_small_fails_all_test": roc_auc(judge_test, failed.astype(int)),
            "roc_auc_small_fails_small_routed": roc_auc(
                judge_test[small_routed], failed[small_routed].astype(int)
            ),
        },
        "cost_assumptions": {
            "prompt_tokens": "MiniLM word-piece count of each prompt",
            "completion_tokens": args.completion_tokens,
            "prices": "tiers' cost blocks of the configs; an escalation pays both tiers",
            "local_and_production_prices_identical": _tier_prices(Path(args.config))
            == _tier_prices(Path(args.production_config)),
        },
        "results": reports,
    }
    report["plot"] = str(_plot_offline(reports["local"], out / "fallback_cost_quality.png"))
    return report


def _plot_offline(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    sweep = result["router_threshold_sweep"]
    ax.plot(
        [p["usd_per_1k_requests"] for p in sweep],
        [p["quality"] for p in sweep],
        "-o",
        ms=3,
        label="router alone (threshold sweep)",
    )
    judged = result["judge_threshold_sweep"]
    ax.plot(
        [p["usd_per_1k_requests"] for p in judged],
        [p["quality"] for p in judged],
        "-s",
        ms=3,
        label="router + judge fallback (judge threshold sweep)",
    )
    for key, marker, label in (
        ("small_only", "v", "small only"),
        ("large_only", "^", "large only"),
        ("router_alone", "D", "router alone (calibrated)"),
        ("router_plus_judge_fallback", "*", "router + judge (chosen threshold)"),
        ("router_plus_oracle_checker", "P", "router + oracle checker (upper bound)"),
    ):
        point = result[key]
        ax.plot(point["usd_per_1k_requests"], point["quality"], marker, ms=10, label=label)
    ax.set_xlabel("$ per 1k requests (local.yaml tier prices)")
    ax.set_ylabel("MMLU accuracy (held-out split)")
    ax.set_title("Router + quality fallback on MMLU outcomes (judge sees questions only)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
