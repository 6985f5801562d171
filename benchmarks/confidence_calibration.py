"""Calibrate the quality gate's confidence check on your small tier's own labelled answers.

`--part calibrate` (default) asks the small tier (`--model`, pinned, uncached, temperature 0,
`logprobs: true`) a seeded, stratified sample of questions with known answers (MMLU,
MMLU-Pro, MATH level 5: `benchmarks/data/labelled_questions.jsonl`, or your own `--questions`
file of the same shape), grades each answer automatically, and sweeps the threshold of the
mean (and of the minimum) token logprob below which the gate escalates: escalation rate, catch
rate (share of wrong answers escalated) and false escalation rate (share of right answers
escalated) with Wilson 95% intervals, and ROC AUC with a bootstrap 95% interval. It chooses
`quality.min_mean_logprob` by a stated rule (the highest catch rate with at most
`--max-false-escalation` false escalations) and replays early escalation on the recorded
tokens. Writes `confidence_calibration.json` and `.png` to `--out` and prints the table.

Early escalation, old against new (two stacks, one after the other; see
benchmarks/early_escalation_benchmark.py):
    --part config   write the two configs (early escalation off / on, same threshold)
    --part early    run the labelled prompts against the stack now serving, `--label off|on`
    --part compare  e2e latency and cost of escalated requests, off against on

The threshold is a property of the small tier's model: the local stack serves SmolLM2-135M
(near chance on MMLU), production Llama-3.1-8B. Run this against your own small tier.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.answer_grading import grade_answer, question_messages
from benchmarks.calibration_analysis import calibration_report, signal_value
from benchmarks.early_escalation_benchmark import (
    compare_runs,
    format_comparison,
    run_early,
    write_config_variants,
)
from benchmarks.labelled_questions import (
    LABELLED_QUESTIONS_PATH,
    ask_gateway,
    load_labelled_questions,
    sample_questions,
)
from serve_app.config import EarlyEscalationConfig
from serve_app.protocol.responses import answer_from_response

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "figures"
EARLY_DEFAULTS = EarlyEscalationConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--part", choices=["calibrate", "early", "config", "compare"], default="calibrate"
    )
    parser.add_argument("--url", "--base-url", dest="url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("CASCADE_API_KEY"),
        help="bearer key for a gateway in api_keys mode (default: $CASCADE_API_KEY)",
    )
    parser.add_argument("--questions", type=Path, default=LABELLED_QUESTIONS_PATH)
    parser.add_argument("--sources", nargs="+", default=["mmlu", "mmlu_pro", "math"])
    parser.add_argument("--count", type=int, default=300, help="questions, stratified by source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=3, help="requests in flight (2-4)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    calibrate = parser.add_argument_group("calibrate")
    calibrate.add_argument("--model", default="cascade-small", help="the small tier, pinned")
    calibrate.add_argument(
        "--backend",
        choices=["gateway", "transformers"],
        default="gateway",
        help="transformers: no stack; the local small tier's model (or --hf-model) answers "
        "offline, greedy, with the same chat template (a stand-in: the gateway is the truth)",
    )
    calibrate.add_argument("--hf-model", help="transformers: a model directory")
    calibrate.add_argument(
        "--answer-style",
        choices=["direct", "reasoned"],
        default="direct",
        help="direct: the answer alone (threshold calibration); reasoned: the model reasons "
        "first, so answers are long and the early-escalation replay has tokens to stop "
        "(use with --choice-max-tokens 192 --math-max-tokens 192)",
    )
    calibrate.add_argument("--choice-max-tokens", type=int, default=8)
    calibrate.add_argument("--math-max-tokens", type=int, default=48)
    calibrate.add_argument("--max-false-escalation", type=float, default=0.10)
    calibrate.add_argument("--bootstrap", type=int, default=1000, help="AUC resamples")
    calibrate.add_argument("--min-tokens", type=int, default=EARLY_DEFAULTS.min_tokens)
    calibrate.add_argument("--window-tokens", type=int, default=EARLY_DEFAULTS.window_tokens)
    early = parser.add_argument_group("early / config / compare")
    early.add_argument("--label", help="early: name of this run's config, e.g. off or on")
    early.add_argument("--early-model", default="cascade", help="routed, so the gate judges")
    early.add_argument("--early-count", type=int, default=60)
    early.add_argument("--early-max-tokens", type=int, default=192)
    early.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "local.yaml")
    early.add_argument(
        "--config-dir", type=Path, default=REPO_ROOT / "artifacts" / "early_escalation"
    )
    early.add_argument(
        "--min-mean-logprob",
        type=float,
        help="config: the threshold both configs use (default: the base config's)",
    )
    early.add_argument(
        "--keep-router",
        action="store_true",
        help="config: keep the base config's router (default: every request to the small tier)",
    )
    return parser.parse_args(argv)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    return {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def _questions(args: argparse.Namespace, count: int) -> list[dict[str, Any]]:
    rows = load_labelled_questions(args.questions)
    sources = [source for source in args.sources if any(row["source"] == source for row in rows)]
    return sample_questions(rows, count, sources, args.seed)


# ---- calibrate ------------------------------------------------------------------------------


def ask_small_tier(args: argparse.Namespace, questions: list[dict[str, Any]]) -> list[dict]:
    """Each question once, pinned to the small tier with logprobs; graded answers."""
    requests = []
    for row in questions:
        max_tokens = args.choice_max_tokens if row["kind"] == "choice" else args.math_max_tokens
        body = {
            "model": args.model,
            "messages": question_messages(row, args.answer_style),
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": True,
            "cache": False,
        }
        headers = {**_headers(args), "x-cascade-quality": "off"}
        requests.append(("/v1/chat/completions", body, headers))
    results = ask_gateway(args.url, requests, concurrency=args.concurrency, desc="small tier")
    answers = []
    for row, result in zip(questions, results, strict=True):
        if result["status"] != 200:
            answers.append({"id": row["id"], "source": row["source"], "error": result["error"]})
            continue
        answer = answer_from_response(result["json"], "chat")
        answers.append(
            _graded(
                row,
                answer.text,
                list(answer.token_logprobs),
                finish_reason=answer.finish_reason,
                latency_s=result["latency_s"],
            )
        )
    return answers


def _graded(row: dict[str, Any], text: str, logprobs: list[float], **extra: Any) -> dict:
    grade = grade_answer(row, text)
    return {
        "id": row["id"],
        "source": row["source"],
        "gold": row["answer"],
        "text": text,
        "parsed": grade.parsed,
        "correct": grade.correct,
        "logprobs": logprobs,
        "mean_logprob": signal_value(logprobs, "mean"),
        "min_logprob": signal_value(logprobs, "min"),
        "reference_correct": row.get("reference_correct"),
        **extra,
    }


def ask_local_model(args: argparse.Namespace, questions: list[dict[str, Any]]) -> list[dict]:
    """Offline stand-in for the small tier: the same weights and chat template in transformers,
    greedy, with the log-probability of every generated token (end-of-turn token included)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.engine_workloads import model_dir

    path = args.hf_model or str(model_dir())
    torch.set_num_threads(1)  # a shared 2-core box
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    answers = []
    for row in tqdm(questions, desc=f"{Path(path).name} (transformers)", unit="q"):
        max_tokens = args.choice_max_tokens if row["kind"] == "choice" else args.math_max_tokens
        encoded = tokenizer.apply_chat_template(
            question_messages(row, args.answer_style),
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        ids = encoded["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.eos_token_id,
            )
        new = out.sequences[0, ids.shape[1] :]
        logprobs = [
            float(torch.log_softmax(score[0].float(), dim=-1)[token])
            for score, token in zip(out.scores, new, strict=True)
        ]
        text = tokenizer.decode(new, skip_special_tokens=True)
        answers.append(_graded(row, text, logprobs))
    return answers


def run_calibration(args: argparse.Namespace) -> dict[str, Any]:
    questions = _questions(args, args.count)
    if args.backend == "transformers":
        args.model = Path(args.hf_model or "smollm2-135m-instruct").name + " (transformers)"
        answers = ask_local_model(args, questions)
    else:
        answers = ask_small_tier(args, questions)
    graded = [answer for answer in answers if "error" not in answer]
    if not graded:
        raise SystemExit(
            f"no answers from {args.url}: {answers[0].get('error') if answers else ''}"
        )
    report = calibration_report(
        graded,
        max_false_escalation=args.max_false_escalation,
        min_tokens=args.min_tokens,
        window_tokens=args.window_tokens,
        resamples=args.bootstrap,
        seed=args.seed,
    )
    report |= {
        "model": args.model,
        "url": args.url if args.backend == "gateway" else None,
        "backend": args.backend,
        "questions_file": str(args.questions),
        "seed": args.seed,
        "errors": len(answers) - len(graded),
        "max_tokens": {"choice": args.choice_max_tokens, "math": args.math_max_tokens},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report["plot"] = str(plot_calibration(report, graded, args.out / "confidence_calibration.png"))
    report["answers_detail"] = answers
    (args.out / "confidence_calibration.json").write_text(json.dumps(report, indent=1))
    print_calibration(report)
    return report


def print_calibration(report: dict[str, Any]) -> None:
    print(f"\n{report['answers']} graded answers, accuracy {report['accuracy']:.1%}:")
    for source, stats in report["by_source"].items():
        print(
            f"  {source:9} {stats['answers']:4} answers, accuracy {stats['accuracy']:.1%}, "
            f"parsed {stats['parsed']:.0%}, {stats['mean_tokens']:.1f} tokens"
        )
    for signal, label in (("mean", "mean token logprob"), ("min", "minimum token logprob")):
        auc = report[signal]["auc_wrong"]
        ci = auc["ci95"]
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        auc_text = f"{auc['auc']:.3f}{ci_text}" if auc["auc"] is not None else "n/a"
        print(f"\nEscalate when the {label} < threshold; ROC AUC for 'wrong': {auc_text}")
        print(report[signal]["table"])
    print(f"\nRule: {report['rule']}.")
    chosen = report["mean"]["chosen"]
    if chosen is None:
        print("No threshold catches a wrong answer within that false-escalation cap.")
        return
    print(
        f"Chosen: quality.min_mean_logprob: {chosen['threshold']:.2f} (escalates "
        f"{chosen['escalation_rate']:.1%}, catches {chosen['catch_rate']:.1%} of wrong answers, "
        f"escalates {chosen['false_escalation_rate']:.1%} of right ones)"
    )
    replay = report["early_escalation_replay"]
    print(
        f"Early escalation replay (min_tokens {replay['min_tokens']}, window "
        f"{replay['window_tokens']}): {replay['answers_with_min_tokens']} of {replay['answers']} "
        f"answers reach min_tokens; stops {replay['stopped_early_of_those']} of the "
        f"{replay['final_check_escalates']} the final check escalates, adds "
        f"{replay['extra_escalations']} escalations."
    )


def _roc_points(values: list[float | None], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted(
        ((-v, not ok) for v, ok in zip(values, correct, strict=True) if v is not None),
        reverse=True,
    )
    labels = np.array([label for _, label in pairs], dtype=bool)
    tpr = np.concatenate([[0.0], np.cumsum(labels) / max(labels.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~labels) / max((~labels).sum(), 1)])
    return fpr, tpr


def plot_calibration(report: dict[str, Any], answers: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, roc) = plt.subplots(1, 2, figsize=(11, 4.5))
    sweep = [point for point in report["mean"]["sweep"] if point["escalated"] > 0]
    thresholds = [point["threshold"] for point in sweep]
    for key, colour, label in (
        ("catch_rate", "tab:red", "wrong answers escalated (catch)"),
        ("false_escalation_rate", "tab:blue", "right answers escalated (false)"),
    ):
        rates = [point[key] if point[key] is not None else np.nan for point in sweep]
        cis = [point[f"{key}_ci95"] or (np.nan, np.nan) for point in sweep]
        curve.plot(thresholds, rates, color=colour, label=label)
        curve.fill_between(
            thresholds, [c[0] for c in cis], [c[1] for c in cis], color=colour, alpha=0.15
        )
    chosen = report["mean"]["chosen"]
    if chosen is not None:
        curve.axvline(chosen["threshold"], color="k", linestyle="--", linewidth=1)
        curve.annotate(f"chosen {chosen['threshold']:.2f}", (chosen["threshold"], 0.95))
    curve.set_xlabel("min_mean_logprob (escalate when the mean token logprob is below)")
    curve.set_ylabel("share (95% Wilson band)")
    curve.set_title(f"{report['model']}: {report['answers']} labelled answers")
    curve.grid(alpha=0.3)
    curve.legend(loc="center right")
    correct = [bool(answer["correct"]) for answer in answers]
    for signal, colour in (("mean", "tab:purple"), ("min", "tab:green")):
        values = [signal_value(answer["logprobs"], signal) for answer in answers]
        fpr, tpr = _roc_points(values, correct)
        auc = report[signal]["auc_wrong"]["auc"]
        roc.plot(fpr, tpr, color=colour, label=f"{signal} logprob (AUC {auc or float('nan'):.2f})")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set_xlabel("right answers escalated")
    roc.set_ylabel("wrong answers escalated")
    roc.set_title("ROC: telling wrong answers from right ones")
    roc.grid(alpha=0.3)
    roc.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- early escalation, old against new ------------------------------------------------------


def run_early_part(args: argparse.Namespace) -> None:
    if not args.label:
        raise SystemExit("--part early needs --label (off or on: the config the stack serves)")
    questions = _questions(args, args.early_count)
    rows = run_early(
        questions,
        url=args.url,
        model=args.early_model,
        max_tokens=args.early_max_tokens,
        concurrency=args.concurrency,
        headers=_headers(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"early_{args.label}.json"
    path.write_text(json.dumps({"label": args.label, "rows": rows}, indent=1))
    print(f"{len(rows)} requests -> {path}")


def run_compare_part(args: argparse.Namespace) -> dict[str, Any]:
    runs = {
        label: json.loads((args.out / f"early_{label}.json").read_text())["rows"]
        for label in ("off", "on")
    }
    comparison = compare_runs(runs["off"], runs["on"])
    (args.out / "early_escalation_comparison.json").write_text(json.dumps(comparison, indent=1))
    print(format_comparison(comparison))
    return comparison


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.part == "calibrate":
        run_calibration(args)
    elif args.part == "config":
        paths = write_config_variants(
            args.config, args.config_dir, args.min_mean_logprob, not args.keep_router
        )
        for label, path in paths.items():
            print(f"early escalation {label}: {path}")
    elif args.part == "early":
        run_early_part(args)
    else:
        run_compare_part(args)


if __name__ == "__main__":
    main()
