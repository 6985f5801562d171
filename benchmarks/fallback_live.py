"""Quality fallback evaluation, live-stack parts: `checks` and `latency`.

`checks` asks the small tier labelled questions with logprobs and measures how well the
structural and confidence checks (and the MMLU judge) separate its wrong answers from its right
ones; `latency` streams the same routed requests with the quality gate off, hold and relay.
`python -m benchmarks.fallback_evaluation --parts checks latency` runs them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchmarks.fallback_offline import share_of

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
    from serve_app.protocol.responses import answer_from_response
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
            "small_failures_caught": share_of(caught, wrong),
            "good_answers_wrongly_escalated": share_of(wrongly, right),
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
