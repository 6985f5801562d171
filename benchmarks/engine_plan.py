"""What one engine levers run measures (`LeverOptions`) and the engines that measure it.

`plan_engines` turns the options into at most three vLLM engine configurations plus the
static-batching baseline, each with the workloads it runs, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import prompt_audit
from benchmarks.engine_runner import ENGINE_BASE_KWARGS, EngineRun, task
from benchmarks.engine_workloads import (
    audit_requests,
    chat,
    cycle,
    default_shared_dir,
    mmlu_prompts,
    output_lengths,
    pair_questions,
    shared_prompt_requests,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "engine_levers.json"
LEVERS = ("continuous", "prefix", "speculative", "audit")


# ---- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LeverOptions:
    """What one run measures; `quick()` is the smoke configuration CI runs."""

    levers: tuple[str, ...] = LEVERS
    max_num_seqs: int = 16
    """vLLM's batch limit, and the static baseline's batch size (same concurrency)."""
    batching_requests: int = 64
    min_output_tokens: int = 16
    max_output_tokens: int = 384
    """Output lengths are log-uniform in [min, max]: many short answers, a few long ones."""
    static_dtype: str = "float32"
    """transformers baseline dtype: on this CPU fp32 decoded faster than bf16 in transformers
    (139 vs 219 ms per batch-of-4 step, one thread), so the baseline gets the faster one."""
    static_torch_threads: int = 1
    """vLLM's CPU worker also runs one torch thread on 2 cores; more threads on a busy box
    made transformers 8-20x slower (OpenMP threads waiting on each other)."""
    system_prompt_tokens: int = 1000
    prefix_requests: int = 24
    prefix_max_tokens: int = 16
    """Prefill-dominated: short answers after the long shared system prompt."""
    spec_requests: int = 8
    spec_max_tokens: int = 128
    num_speculative_tokens: int = 4
    prompt_lookup_min: int = 2
    prompt_lookup_max: int = 4
    audit_requests: int = 64
    trim_to_tokens: int = prompt_audit.DEFAULT_TRIM_TO_TOKENS
    engine_timeout_s: float = 3600.0
    """Longest one engine configuration may run before it is killed and reported failed."""
    seed: int = 0
    out: Path = DEFAULT_OUT
    """JSON report; plots and engine logs are written beside it."""
    shared_dir: Path = field(default_factory=default_shared_dir)
    """Shared data folder; the MMLU prompts of the workloads come from its data/routellm-mmlu."""
    plot: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.levers) - set(LEVERS)
        if unknown:
            raise ValueError(f"unknown levers {sorted(unknown)}; known: {list(LEVERS)}")
        if not 0 < self.min_output_tokens <= self.max_output_tokens:
            raise ValueError("need 0 < min_output_tokens <= max_output_tokens")
        counts = (
            self.batching_requests,
            self.prefix_requests,
            self.spec_requests,
            self.audit_requests,
            self.max_num_seqs,
        )
        if min(counts) <= 0:
            raise ValueError("request counts and max_num_seqs must be positive")
        if self.prefix_requests < 2 or self.audit_requests < 2:
            raise ValueError("prefix and audit workloads need at least 2 requests to share")

    @classmethod
    def quick(cls, **overrides: Any) -> LeverOptions:
        settings: dict[str, Any] = {
            "max_num_seqs": 4,
            "batching_requests": 8,
            "min_output_tokens": 4,
            "max_output_tokens": 32,
            "prefix_requests": 4,
            "prefix_max_tokens": 4,
            "spec_requests": 2,
            "spec_max_tokens": 24,
            "audit_requests": 6,
            "engine_timeout_s": 900.0,
        }
        return cls(**(settings | overrides))


# ---- workloads of one run ------------------------------------------------------------------


def batching_requests(options: LeverOptions) -> list[dict]:
    lengths = output_lengths(
        options.batching_requests,
        options.min_output_tokens,
        options.max_output_tokens,
        options.seed,
    )
    questions = cycle(pair_questions(), options.batching_requests)
    return [
        chat([{"role": "user", "content": q}], n, ignore_eos=True)
        for q, n in zip(questions, lengths, strict=True)
    ]


def spec_workloads(options: LeverOptions) -> dict[str, list[dict]]:
    """A copy-heavy workload (n-gram lookup's best case) and an open-question one."""
    passages = cycle(mmlu_prompts(limit=57, shared_dir=options.shared_dir), options.spec_requests)
    questions = cycle(pair_questions()[::7], options.spec_requests)
    copy = [
        chat(
            [
                {
                    "role": "user",
                    "content": "Copy the following text exactly, word for word, "
                    f"without answering it:\n\n{p}",
                }
            ],
            options.spec_max_tokens,
        )
        for p in passages
    ]
    open_ended = [
        chat(
            [{"role": "user", "content": f"{q} Explain your answer in a few sentences."}],
            options.spec_max_tokens,
        )
        for q in questions
    ]
    return {"copy": copy, "open": open_ended}


# ---- engine plan --------------------------------------------------------------------------


def spec_tasks(options: LeverOptions) -> list[dict[str, Any]]:
    tasks = []
    for workload, requests in spec_workloads(options).items():
        tasks.append(task(f"spec/{workload}/sequential", [[r] for r in requests]))
        tasks.append(task(f"spec/{workload}/batched", [requests]))
    return tasks


def plan_engines(options: LeverOptions, system_prompt: str) -> list[EngineRun]:
    """Three vLLM engines at most (start-up dominates the quick run) plus the static baseline.

    `plain` (no prefix caching, no speculation) is the "off" side of every lever.
    """
    levers = set(options.levers)
    base = ENGINE_BASE_KWARGS | {"max_num_seqs": options.max_num_seqs}
    prefix_questions = pair_questions()[: options.prefix_requests]
    prefix_requests = shared_prompt_requests(
        system_prompt, cycle(prefix_questions, options.prefix_requests), options.prefix_max_tokens
    )
    # The first request computes the shared prefix; the rest arrive once it has been seen.
    prefix_task = task("prefix", [prefix_requests[:1], prefix_requests[1:]])
    plain = EngineRun("plain", "vllm", base | {"enable_prefix_caching": False})
    prefix_on = EngineRun("prefix-caching", "vllm", base | {"enable_prefix_caching": True})
    speculative = EngineRun(
        "ngram-speculation",
        "vllm",
        base
        | {
            "enable_prefix_caching": False,
            "speculative_config": {
                "method": "ngram",
                "num_speculative_tokens": options.num_speculative_tokens,
                "prompt_lookup_min": options.prompt_lookup_min,
                "prompt_lookup_max": options.prompt_lookup_max,
            },
        },
    )
    static = EngineRun(
        "static-batching",
        "transformers",
        {
            "batch_size": options.max_num_seqs,
            "dtype": options.static_dtype,
            "torch_threads": options.static_torch_threads,
        },
    )
    if "continuous" in levers:
        requests = batching_requests(options)
        plain.tasks.append(task("continuous", [requests]))
        static.tasks.append(task("continuous", [requests]))
    if "prefix" in levers:
        plain.tasks.append(prefix_task)
        prefix_on.tasks.append(prefix_task)
    if "speculative" in levers:
        plain.tasks.extend(spec_tasks(options))
        speculative.tasks.extend(spec_tasks(options))
    if "audit" in levers:
        requests = audit_requests(
            system_prompt, options.audit_requests, max_tokens=8, shared_dir=options.shared_dir
        )
        prefix_on.tasks.append(task("audit", [requests[:1], requests[1:]]))
    return [run for run in (plain, prefix_on, speculative, static) if run.tasks]
