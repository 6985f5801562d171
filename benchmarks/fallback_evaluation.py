"""Evaluate the quality fallback: what it catches, what it costs, what it does to latency.

Three parts, each optional (`--parts`):

- `offline`: RouteLLM's MMLU outcomes (Mixtral-8x7B = small, GPT-4 = large; correctness per
  question, **no answer texts**). A judge is trained with router_training on a judge split
  built from them (label 1 = the small model's answer was wrong) on the router's own training
  split, then router alone is compared with router + fallback on the router's held-out split:
  escalation rate, small-tier failures caught, good small answers wrongly escalated, and the
  cost–quality point (an escalation pays both tiers). Without answer texts the judge reads the
  question only and the structural/confidence checks cannot run at all; the "oracle checker"
  row shows what a checker that saw every wrong answer would reach.
- `checks` (live stack): arithmetic and short factual questions with known answers, asked of
  the small tier with logprobs; how well the structural and confidence checks (and the MMLU
  judge) separate its wrong answers from its right ones.
- `latency` (live stack): the same streamed routed requests with the quality gate off, hold
  and relay (per-request `x-cascade-quality` header, one run, interleaved): TTFT and
  end-to-end latency.

    python -m benchmarks.fallback_evaluation --quick            # offline only, fast
    python -m benchmarks.fallback_evaluation --parts offline checks latency \\
        --base-url http://127.0.0.1:8000                      # against `make run`

Writes `fallback_evaluation.json` and PNG plots to `--out`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
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


# ------------------------------------------------------------------ shared helpers


def _tier_prices(config_path: Path) -> dict[str, Any]:
    from serve_app.accounting.cost_model import TierPrice
    from serve_app.config import CascadeConfig

    raw = yaml.safe_load(config_path.read_text())
    args = raw["applications"][0]["args"]
    config = CascadeConfig.model_validate(args)
    return {name: TierPrice.from_config(config.tiers[name].cost) for name in ("small", "large")}


def _share(numerator: int, denominator: int) -> float | None:
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
    from serve_app.routing.router import HeuristicScorer, Router

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

    from router_training.config import resolve_model_source

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
            "escalation_rate_of_small_routed": _share(int(escalate.sum()), int(to_small.sum())),
            "escalation_rate_of_all": float(escalate.mean()),
            "small_failures_caught": _share(
                int((escalate & small_wrong).sum()), int(small_wrong.sum())
            ),
            "good_small_answers_wrongly_escalated": _share(
                int((escalate & small_right).sum()), int(small_right.sum())
            ),
            "escalations_that_fixed_the_answer": _share(
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
    from serve_app.routing.router import ROUTER_CARD_FILE

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


# ------------------------------------------------------------------ live: labelled checks


def labelled_questions(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Arithmetic with computed answers and short facts with known answers, mixed."""
    rng = np.random.default_rng(seed)
    facts = [
        ("What is the capital of France?", "paris"),
        ("What is the capital of Japan?", "tokyo"),
        ("What is the capital of Italy?", "rome"),
        ("What is the capital of Spain?", "madrid"),
        ("What is the capital of Germany?", "berlin"),
        ("What is the capital of Egypt?", "cairo"),
        ("What is the capital of Canada?", "ottawa"),
        ("What is the capital of Australia?", "canberra"),
        ("How many legs does a spider have?", "8"),
        ("How many days are in a week?", "7"),
        ("What colour is the sky on a clear day?", "blue"),
        ("What is the chemical symbol for gold?", "au"),
        ("Who wrote Romeo and Juliet?", "shakespeare"),
        ("What planet is known as the Red Planet?", "mars"),
        ("What is the largest ocean on Earth?", "pacific"),
        ("What gas do plants absorb from the air?", "carbon dioxide"),
    ]
    n_facts = min(count // 2, len(facts))
    questions = [{"prompt": q, "reference": a, "kind": "fact"} for q, a in facts[:n_facts]]
    while len(questions) < count:
        a, b = (int(x) for x in rng.integers(2, 60, size=2))
        op = str(rng.choice(["+", "-", "*"]))
        value = a + b if op == "+" else a - b if op == "-" else a * b
        questions.append(
            {"prompt": f"What is {a} {op} {b}?", "reference": str(value), "kind": "arithmetic"}
        )
    return questions


def _is_correct(text: str, reference: str) -> bool:
    import re

    normalised = text.lower().replace(",", "")
    if reference.lstrip("-").isdigit():
        return reference in re.findall(r"-?\d+", normalised)
    return reference in normalised


def run_checks(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import httpx

    from serve_app.config import QualityConfig
    from serve_app.protocol.openai_api import answer_from_response
    from serve_app.quality.checks import QualityGate

    questions = labelled_questions(args.check_questions)
    rows = []
    with httpx.Client(base_url=args.base_url, timeout=180) as client:
        for q in tqdm(questions, desc="small tier, labelled", unit="q"):
            body = {
                "model": "cascade-small",
                "messages": [{"role": "user", "content": q["prompt"] + " Answer briefly."}],
                "max_tokens": args.check_max_tokens,
                "temperature": 0,
                "logprobs": True,
                "cache": False,
            }
            response = client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            answer = answer_from_response(response.json(), "chat")
            logprobs = answer.token_logprobs
            rows.append(
                {
                    **q,
                    "answer": answer.text,
                    "finish_reason": answer.finish_reason,
                    "correct": _is_correct(answer.text, q["reference"]),
                    "mean_logprob": float(np.mean(logprobs)) if logprobs else None,
                    "min_logprob": float(np.min(logprobs)) if logprobs else None,
                    "structural": QualityGate(QualityConfig()).escalation_reason(answer),
                    "_answer": answer,
                }
            )
    wrong = sum(not r["correct"] for r in rows)
    right = len(rows) - wrong

    def separation(name: str, flags: Sequence[bool]) -> dict[str, Any]:
        caught = sum(f and not r["correct"] for f, r in zip(flags, rows, strict=True))
        wrongly = sum(f and r["correct"] for f, r in zip(flags, rows, strict=True))
        return {
            "checks": name,
            "escalation_rate": sum(flags) / len(rows),
            "small_failures_caught": _share(caught, wrong),
            "good_answers_wrongly_escalated": _share(wrongly, right),
        }

    results = [separation("structural (defaults)", [r["structural"] is not None for r in rows])]
    for threshold in args.mean_logprob_thresholds:
        gate = QualityGate(QualityConfig(min_mean_logprob=threshold))
        flags = [gate.escalation_reason(r["_answer"]) is not None for r in rows]
        results.append(separation(f"structural + mean logprob < {threshold}", flags))
    for threshold in args.min_logprob_thresholds:
        gate = QualityGate(QualityConfig(min_token_logprob=threshold))
        flags = [gate.escalation_reason(r["_answer"]) is not None for r in rows]
        results.append(separation(f"structural + min token logprob < {threshold}", flags))

    from router_training.metrics import roc_auc

    labels = [int(not r["correct"]) for r in rows]
    with_logprobs = [r for r in rows if r["mean_logprob"] is not None]
    report: dict[str, Any] = {
        "questions": len(rows),
        "small_tier_accuracy": right / len(rows),
        "by_kind": {
            kind: sum(r["correct"] for r in rows if r["kind"] == kind)
            / max(1, sum(r["kind"] == kind for r in rows))
            for kind in ("fact", "arithmetic")
        },
        "roc_auc_wrong_vs_negative_mean_logprob": roc_auc(
            [-r["mean_logprob"] for r in with_logprobs],
            [int(not r["correct"]) for r in with_logprobs],
        ),
        "roc_auc_wrong_vs_negative_min_logprob": roc_auc(
            [-r["min_logprob"] for r in with_logprobs],
            [int(not r["correct"]) for r in with_logprobs],
        ),
        "separation": results,
    }
    judge_dir = Path(args.judge_checkpoint) if args.judge_checkpoint else None
    judge_dir = judge_dir or out / "judge_mmlu" / "export"
    if judge_dir.is_dir():
        from serve_app.quality.judge import AnswerJudge

        judge = AnswerJudge(judge_dir)
        scores = [judge.score(r["prompt"], r["answer"]) for r in rows]
        report["mmlu_judge_roc_auc"] = roc_auc(scores, labels)
        report["mmlu_judge_note"] = (
            "the MMLU judge was trained on questions only (no answers), from other models"
        )
    report["answers"] = [{k: v for k, v in r.items() if k != "_answer"} for r in rows]
    report["plot"] = str(_plot_checks(rows, out / "fallback_checks_logprobs.png"))
    return report


def _plot_checks(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for correct, colour, label in ((True, "tab:green", "right"), (False, "tab:red", "wrong")):
        pts = [r for r in rows if r["correct"] is correct and r["mean_logprob"] is not None]
        ax.scatter(
            [r["mean_logprob"] for r in pts],
            [r["min_logprob"] for r in pts],
            c=colour,
            label=f"{label} ({len(pts)})",
            alpha=0.7,
        )
    ax.set_xlabel("mean token logprob")
    ax.set_ylabel("min token logprob")
    ax.set_title("Small tier (SmolLM2-135M): labelled answers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ live: latency


def _stream_once(client, body: dict[str, Any], mode: str) -> dict[str, Any]:
    started = time.perf_counter()
    ttft = None
    headers: dict[str, str] = {}
    with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"x-cascade-quality": mode}
    ) as response:
        response.raise_for_status()
        headers = dict(response.headers)
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            payload = json.loads(line.removeprefix("data: "))
            delta = (payload.get("choices") or [{}])[0].get("delta", {})
            if ttft is None and delta.get("content"):
                ttft = time.perf_counter() - started
    return {
        "mode": mode,
        "ttft_s": ttft,
        "e2e_s": time.perf_counter() - started,
        "route": headers.get("x-cascade-route"),
        "tier": headers.get("x-cascade-tier"),
        "escalated": headers.get("x-cascade-escalated") == "true",
        "reason": headers.get("x-cascade-escalation-reason"),
    }


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_latency(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import httpx

    modes = ("off", "hold", "relay")
    prompts = [q["prompt"] for q in labelled_questions(args.latency_requests, seed=1)]
    runs: list[dict[str, Any]] = []
    with httpx.Client(base_url=args.base_url, timeout=180) as client:
        warm = {"model": "cascade", "messages": [{"role": "user", "content": "Hi"}]}
        _stream_once(client, {**warm, "stream": True, "max_tokens": 4, "cache": False}, "off")
        for prompt in tqdm(prompts, desc="off / hold / relay", unit="prompt"):
            body = {
                "model": "cascade",
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.latency_max_tokens,
                "temperature": 0,
                "stream": True,
                "cache": False,
            }
            for mode in modes:  # interleaved: each mode sees the same load
                runs.append({"prompt": prompt, **_stream_once(client, body, mode)})
    summary = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        small = [r for r in mine if r["route"] == "small"]
        kept = [r for r in small if not r["escalated"]]
        summary[mode] = {
            "requests": len(mine),
            "routed_small": len(small),
            "escalated": sum(r["escalated"] for r in mine),
            "ttft_p50_s": _pct([r["ttft_s"] for r in small if r["ttft_s"] is not None], 50),
            "ttft_p90_s": _pct([r["ttft_s"] for r in small if r["ttft_s"] is not None], 90),
            "e2e_p50_s": _pct([r["e2e_s"] for r in small], 50),
            "e2e_p90_s": _pct([r["e2e_s"] for r in small], 90),
            "ttft_p50_s_not_escalated": _pct(
                [r["ttft_s"] for r in kept if r["ttft_s"] is not None], 50
            ),
            "e2e_p50_s_not_escalated": _pct([r["e2e_s"] for r in kept], 50),
        }
    report = {
        "max_tokens": args.latency_max_tokens,
        "note": "percentiles over requests the router sent to the small tier",
        "summary": summary,
        "runs": runs,
    }
    report["plot"] = str(_plot_latency(runs, out / "fallback_latency.png"))
    return report


def _plot_latency(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("off", "hold", "relay")
    small = [r for r in runs if r["route"] == "small"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, key, title in ((axes[0], "ttft_s", "TTFT"), (axes[1], "e2e_s", "end to end")):
        data = [[r[key] for r in small if r["mode"] == m and r[key] is not None] for m in modes]
        ax.boxplot(data, tick_labels=modes)
        ax.set_title(f"{title} (s), small-routed streams")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fallback_evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["offline", "checks", "latency"],
        default=["offline"],
        help="checks and latency need a running stack at --base-url",
    )
    parser.add_argument("--quick", action="store_true", help="fewer epochs and requests")
    parser.add_argument("--out", default="artifacts/fallback_eval")
    parser.add_argument("--data", default="artifacts/data/routellm_mmlu.jsonl")
    parser.add_argument("--routellm-dir", default="../shared/data/routellm-mmlu")
    parser.add_argument(
        "--router-checkpoint",
        default="artifacts/router_mmlu/seed-0/export",
        help="router export; the heuristic router when missing",
    )
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "local.yaml"))
    parser.add_argument(
        "--production-config", default=str(REPO_ROOT / "configs" / "production.yaml")
    )
    parser.add_argument("--seed", type=int, default=0, help="the router seed whose split to use")
    parser.add_argument(
        "--target-escalation",
        type=float,
        default=0.2,
        help="share of small-routed validation answers the judge threshold escalates",
    )
    parser.add_argument(
        "--completion-tokens", type=int, default=16, help="assumed tokens of an MMLU answer"
    )
    parser.add_argument(
        "--judge-checkpoint",
        help="judge the `checks` part also scores (default: the one `offline` wrote to --out)",
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--check-questions", type=int, default=48)
    parser.add_argument("--check-max-tokens", type=int, default=48)
    parser.add_argument(
        "--mean-logprob-thresholds", type=float, nargs="*", default=[-0.5, -1.0, -1.5, -2.0, -3.0]
    )
    parser.add_argument(
        "--min-logprob-thresholds", type=float, nargs="*", default=[-3.0, -5.0, -8.0]
    )
    parser.add_argument("--latency-requests", type=int, default=16)
    parser.add_argument("--latency-max-tokens", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.check_questions = min(args.check_questions, 16)
        args.latency_requests = min(args.latency_requests, 6)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "fallback_evaluation.json"
    report: dict[str, Any] = {}
    if report_path.is_file():  # parts run separately accumulate in one report
        report = json.loads(report_path.read_text())
    report["quick"] = args.quick
    for part, run in (("offline", run_offline), ("checks", run_checks), ("latency", run_latency)):
        if part in args.parts:
            report[part] = run(args, out)
            report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(_headline(report), indent=2, default=str))
    print(f"report: {report_path}")
    return 0


def _headline(report: dict[str, Any]) -> dict[str, Any]:
    """The figures worth reading first, without the sweeps and per-request rows."""
    headline: dict[str, Any] = {}
    if "offline" in report:
        offline = report["offline"]
        local = offline["results"]["local"]
        headline["offline"] = {
            "what_the_judge_sees": offline["what_the_judge_sees"],
            "router": offline["router"],
            "judge": offline["judge"],
            **{
                key: local[key]
                for key in (
                    "small_only",
                    "large_only",
                    "router_alone",
                    "router_plus_judge_fallback",
                    "router_alone_at_same_cost",
                    "router_plus_oracle_checker",
                )
            },
        }
    if "checks" in report:
        headline["checks"] = {k: v for k, v in report["checks"].items() if k != "answers"}
    if "latency" in report:
        headline["latency"] = report["latency"]["summary"]
    return headline


if __name__ == "__main__":
    sys.exit(main())
