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

# The command line (its --help is the docstring above, in full); the parts are in
# `benchmarks.fallback_offline` and `benchmarks.fallback_live`.

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from benchmarks.fallback_live import run_checks, run_latency
from benchmarks.fallback_offline import run_offline

REPO_ROOT = Path(__file__).resolve().parent.parent


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
