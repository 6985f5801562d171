"""Engine levers benchmark (issue 6): each vLLM lever on vs off, same model, same workload.

One run, one model (SmolLM2-135M-Instruct, prepared by `devtools.models`), greedy
decoding, and every engine in its own subprocess (its own process group, killed afterwards) so
memory is freed between configurations:

1. Continuous batching: N chat requests with varied output lengths submitted at once to vLLM's
   offline engine (`vllm.LLM`), against a static-batching transformers `generate` baseline
   (padded batches of the same size as vLLM's `max_num_seqs`, each batch runs until its longest
   member is done). Both produce exactly the same number of tokens per request (`ignore_eos`
   / `min_new_tokens`), so output tokens/s compare like for like.
2. Prefix caching on vs off, every request sharing a ~1,000-token system prompt: TTFT of the
   first (cold) request and of the rest (sent together once the prefix has been seen), prompt
   and output tokens/s, and vLLM's own prefix-cache hit rate (`vllm:prefix_cache_hits /
   vllm:prefix_cache_queries`).
3. Speculative decoding on vs off: n-gram prompt lookup (no second model needed), on a
   copy-heavy workload (the answer repeats the prompt) and an open-question workload, each sent
   one request at a time and all at once: output tokens/s, the acceptance rate
   (`vllm:spec_decode_num_accepted_tokens / num_draft_tokens`) and whether greedy outputs match.
4. Prompt cost audit (`benchmarks.prompt_audit`) of a chat workload with the same shared system
   prompt, its hit rate measured on the prefix-caching engine.

    flock /tmp/cascade-live.lock nice -n 10 python -m benchmarks.engine_levers     # ~15 min
    flock /tmp/cascade-live.lock python -m benchmarks.engine_levers --quick        # ~3 min

Engines are as heavy as the live stack: run under the live-stack lock. Timings are printed,
never asserted; on a shared 2-core box, read them with the load average the report records.

The MMLU prompts come from the shared data folder: `--shared-dir`, else `$CASCADE_SHARED_DIR`,
else `shared` beside the repo. This module is the command line and the run; the parts are
`engine_plan` (options, engines), `engine_workloads` (requests, tokenizer only),
`engine_runner` and `engine_child` (engine subprocesses), `engine_analysis` and `engine_report`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.engine_analysis import (
    analyse_audit,
    analyse_continuous,
    analyse_prefix,
    analyse_speculative,
)
from benchmarks.engine_child import child_main
from benchmarks.engine_plan import (
    DEFAULT_OUT,
    LEVERS,
    LeverOptions,
    batching_requests,
    plan_engines,
)
from benchmarks.engine_report import format_report, plot_report, write_report
from benchmarks.engine_runner import ENGINE_ENV, run_engine_subprocess
from benchmarks.engine_workloads import (
    MODEL_NAME,
    SHARED_DIR_ENV,
    audit_requests,
    build_system_prompt,
    default_shared_dir,
    load_tokenizer,
)

# ---- the run ---------------------------------------------------------------------------------


def run_benchmark(options: LeverOptions) -> dict[str, Any]:
    tokenizer = load_tokenizer()
    system_prompt = build_system_prompt(
        tokenizer, options.system_prompt_tokens, shared_dir=options.shared_dir
    )
    system_prompt_tokens = len(tokenizer.encode(system_prompt))
    runs = plan_engines(options, system_prompt)
    logs_dir = options.out.with_name(f"{options.out.stem}_logs")
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    for run in tqdm(
        runs, desc="engine configurations", unit="engine", disable=not options.progress
    ):
        log_path = logs_dir / f"{run.name}.log"
        results[run.name] = run_engine_subprocess(run, log_path, options.engine_timeout_s)
    # Raw per-request results first: an analysis bug must not cost the engines' minutes.
    write_report(results, options.out.with_name(f"{options.out.stem}_raw.json"))
    report: dict[str, Any] = {
        "model": MODEL_NAME,
        "options": _jsonable(asdict(options)),
        "engine_kwargs": {run.name: run.engine_kwargs for run in runs},
        "engine_env": ENGINE_ENV,
        "engine_start_s": {name: r.get("start_s") for name, r in results.items()},
        "errors": {name: r["error"] for name, r in results.items() if "error" in r},
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1_5_15_before": load_before,
            "load_avg_1_5_15_after": os.getloadavg(),
        },
    }
    levers = set(options.levers)
    if "continuous" in levers:
        report["continuous_batching"] = analyse_continuous(
            results["plain"], results["static-batching"], batching_requests(options)
        )
    if "prefix" in levers:
        report["prefix_caching"] = analyse_prefix(
            results["plain"], results["prefix-caching"], system_prompt_tokens
        )
    if "speculative" in levers:
        spec_run = next(r for r in runs if r.name == "ngram-speculation")
        report["speculative_decoding"] = analyse_speculative(
            results["plain"],
            results["ngram-speculation"],
            spec_run.engine_kwargs["speculative_config"],
        )
    if "audit" in levers:
        requests = audit_requests(
            system_prompt, options.audit_requests, max_tokens=8, shared_dir=options.shared_dir
        )
        report["prompt_audit"] = analyse_audit(
            results["prefix-caching"], requests, tokenizer, options
        )
    return report


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Engine levers, each on vs off on SmolLM2-135M in one run: continuous "
        "batching (vLLM) vs static batching (transformers), prefix caching, n-gram speculative "
        "decoding, and a prompt cost audit. Starts vLLM engines: run under "
        "`flock /tmp/cascade-live.lock`.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: few requests, few tokens (~3 min, mostly engine start)",
    )
    parser.add_argument(
        "--levers",
        nargs="+",
        choices=LEVERS,
        default=list(LEVERS),
        help="levers to measure (default: all)",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help="continuous-batching requests (default 64, quick 8)",
    )
    parser.add_argument(
        "--max-output-tokens",
        type=int,
        default=None,
        help="longest output of the batching workload (default 384, quick 32)",
    )
    parser.add_argument(
        "--system-prompt-tokens",
        type=int,
        default=1000,
        help="shared system prompt length (%(default)s)",
    )
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=default_shared_dir(),
        help="shared data folder; the MMLU prompts come from its data/routellm-mmlu "
        f"(default: ${SHARED_DIR_ENV}, else `shared` beside the repo: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON report; PNGs and engine logs go beside it (%(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser


def options_from_args(args: argparse.Namespace) -> LeverOptions:
    overrides: dict[str, Any] = {
        "levers": tuple(args.levers),
        "system_prompt_tokens": args.system_prompt_tokens,
        "shared_dir": args.shared_dir,
        "out": args.out,
        "plot": not args.no_plot,
        "progress": not args.no_progress,
    }
    if args.requests is not None:
        overrides["batching_requests"] = args.requests
    if args.max_output_tokens is not None:
        overrides["max_output_tokens"] = args.max_output_tokens
    return LeverOptions.quick(**overrides) if args.quick else replace(LeverOptions(), **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    options = options_from_args(args)
    # A TERM (e.g. from `timeout`) must unwind through run_engine_subprocess's `finally`, which
    # kills the engine's process group; Python's default TERM exits without running it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = run_benchmark(options)
    write_report(report, options.out)
    print(format_report(report))
    written = [options.out]
    if options.plot:
        written += plot_report(report, options.out)
    print("\nWrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
