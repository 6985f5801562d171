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
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import prompt_audit

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
MMLU_DIR = Path("/work/shared/data/routellm-mmlu")
DEFAULT_OUT = REPO_ROOT / "artifacts" / "engine_levers.json"
MODEL_NAME = "smollm2-135m-instruct"
LEVERS = ("continuous", "prefix", "speculative", "audit")

# Settings that work for vLLM's CPU build on this box (/work/shared/ENVIRONMENT.md).
ENGINE_BASE_KWARGS: dict[str, Any] = {
    "dtype": "float32",  # as configs/local.yaml: bf16 has no oneDNN matmul on AVX2 CPUs
    "enforce_eager": True,
    "max_model_len": 2048,
    "disable_log_stats": False,  # the prefix-cache and spec-decode counters need stats on
    "seed": 0,
}
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "0"}
ENGINE_COUNTER_MARKERS = ("prefix_cache", "spec_decode", "num_preemptions")

SYSTEM_PROMPT_PREAMBLE = (
    "You are StudyBuddy, the tutoring assistant of an online course that prepares students "
    "for broad multiple-choice exams in science, history, law, medicine and the humanities. "
    "Follow these rules in every answer. Be accurate: if you are not sure, say so and explain "
    "what you would check. Be brief: answer in at most three sentences unless the student asks "
    "for more. Explain the reasoning behind an answer, not just the letter. Never invent "
    "citations, statistics or quotes. Use plain language and define any technical term the "
    "first time you use it. If a question is ambiguous, state the reading you chose. Do not "
    "help with cheating on a live exam. Keep a friendly, encouraging tone. The questions below "
    "show the style and level of the course material; students will ask about topics like "
    "these.\n\nExample course questions:\n"
)


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


# ---- workloads (built in the parent, tokenizer only) -------------------------------------


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def model_dir() -> Path:
    from devtools.models import prepare

    return prepare(MODEL_NAME)


def pair_questions() -> list[str]:
    """Distinct short questions from the cache benchmark's hand-written pairs."""
    seen: dict[str, None] = {}
    for line in PAIRS_PATH.read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            seen.setdefault(pair["stored"], None)
            seen.setdefault(pair["asked"], None)
    return list(seen)


def mmlu_prompts(limit: int, max_chars: int = 700) -> list[str]:
    """MMLU questions with their options (the prompt column), shortest subjects excluded."""
    prompts: list[str] = []
    for path in sorted(MMLU_DIR.glob("mmlu_*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                text = row["prompt"].removesuffix("Answer:").strip()
                if 80 <= len(text) <= max_chars:
                    prompts.append(text)
                    break  # one per subject: a varied set
        if len(prompts) >= limit:
            break
    return prompts


def cycle(items: Sequence[str], count: int) -> list[str]:
    if not items:
        raise ValueError("empty question source")
    return [items[i % len(items)] for i in range(count)]


def output_lengths(count: int, low: int, high: int, seed: int) -> list[int]:
    """Log-uniform lengths: realistic chat traffic has many short answers and a long tail."""
    rng = random.Random(seed)
    return [round(low * (high / low) ** rng.random()) for _ in range(count)]


def build_system_prompt(tokenizer: Any, target_tokens: int) -> str:
    """A tutoring assistant's rules plus example course questions, about `target_tokens` long."""
    text = SYSTEM_PROMPT_PREAMBLE
    for example in mmlu_prompts(limit=57):
        candidate = f"{text}- {example}\n"
        if len(tokenizer.encode(candidate)) <= target_tokens:
            text = candidate  # else skip it: a shorter example further on may still fit
    return text


def chat(messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool = False) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "ignore_eos": ignore_eos}


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


def shared_prompt_requests(system_prompt: str, questions: Sequence[str], max_tokens: int) -> list:
    return [
        chat(
            [{"role": "system", "content": system_prompt}, {"role": "user", "content": q}],
            max_tokens,
        )
        for q in questions
    ]


def audit_requests(system_prompt: str, count: int, max_tokens: int) -> list[dict]:
    # Short questions alternating with longer MMLU items (question + options). The prefix
    # workload uses the pair questions from the start, the audit from the end: no repeats.
    short, long = list(reversed(pair_questions())), mmlu_prompts(limit=57)
    questions = [q for pair in zip(short, long, strict=False) for q in pair]
    return shared_prompt_requests(system_prompt, cycle(questions, count), max_tokens)


def spec_workloads(options: LeverOptions) -> dict[str, list[dict]]:
    """A copy-heavy workload (n-gram lookup's best case) and an open-question one."""
    passages = cycle(mmlu_prompts(limit=57), options.spec_requests)
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


def chat_prompt_token_ids(tokenizer: Any, requests: Sequence[dict]) -> list[list[int]]:
    """Prompt tokens exactly as vLLM's `LLM.chat` builds them (the model's chat template)."""
    return [
        list(
            tokenizer.apply_chat_template(
                r["messages"], tokenize=True, add_generation_prompt=True, return_dict=False
            )
        )
        for r in requests
    ]


# ---- engine plan --------------------------------------------------------------------------


@dataclass
class EngineRun:
    """One subprocess: an engine configuration and the tasks it runs, in order."""

    name: str
    kind: str  # "vllm" or "transformers"
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)


def task(name: str, waves: list[list[dict]]) -> dict[str, Any]:
    """Requests of one wave are submitted together; waves run one after another."""
    return {"name": name, "waves": waves}


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
        requests = audit_requests(system_prompt, options.audit_requests, max_tokens=8)
        prefix_on.tasks.append(task("audit", [requests[:1], requests[1:]]))
    return [run for run in (plain, prefix_on, speculative, static) if run.tasks]


# ---- subprocess runner (parent side) ---------------------------------------------------------


def run_engine_subprocess(
    run: EngineRun, log_path: Path, timeout_s: float = 3600.0
) -> dict[str, Any]:
    """Run one EngineRun in a fresh process group; kill whatever it leaves behind."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="engine-levers-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**asdict(run), "result_path": str(result_path)}))
        env = {**os.environ, **ENGINE_ENV}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.engine_levers", "--child", str(spec_path)],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode: int | str = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                returncode = f"none (killed after {timeout_s:.0f} s)"
            finally:
                _kill_process_group(process.pid)
        if result_path.exists():
            return json.loads(result_path.read_text())
    tail = log_path.read_text(errors="replace")[-2000:]
    return {"error": f"engine process exited with code {returncode} and no result", "log": tail}


def _kill_process_group(pgid: int) -> None:
    """vLLM's EngineCore/Worker processes can outlive their parent (ENVIRONMENT.md)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure_audit_on_engine(requests: list[dict], out: Path) -> dict[str, int]:
    """Run the audit workload on a prefix-caching engine; vLLM's hit and query token counts."""
    run = EngineRun("prefix-caching", "vllm", ENGINE_BASE_KWARGS | {"enable_prefix_caching": True})
    run.tasks.append(task("audit", [requests[:1], requests[1:]]))
    result = run_engine_subprocess(run, out.with_name(f"{out.stem}_engine.log"))
    if "error" in result:
        raise RuntimeError(f"audit engine failed: {result['error']}")
    return audit_counts(result["tasks"]["audit"])


def audit_counts(task_result: dict[str, Any]) -> dict[str, int]:
    counters = task_result["counters"]
    return {
        "hit_tokens": int(counters.get("vllm:prefix_cache_hits", 0)),
        "query_tokens": int(counters.get("vllm:prefix_cache_queries", 0)),
    }


# ---- child side: vLLM -------------------------------------------------------------------------


def child_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    result_path = Path(spec.pop("result_path"))
    run = EngineRun(**spec)
    runner = run_vllm if run.kind == "vllm" else run_static_batching
    try:
        result = runner(run, result_path)
    except Exception as error:  # reported in the JSON (e.g. a lever the CPU build rejects)
        result = {"error": f"{type(error).__name__}: {error}"}
        result_path.write_text(json.dumps(result))
        raise
    result_path.write_text(json.dumps(result))
    return 0


def run_vllm(run: EngineRun, result_path: Path) -> dict[str, Any]:
    from vllm import LLM

    started = time.perf_counter()
    llm = LLM(model=str(model_dir()), **run.engine_kwargs)
    start_s = time.perf_counter() - started
    stop_watching = watch_engine_processes(result_path)
    try:
        warm_up_vllm(llm)
        tasks = {}
        for spec in run.tasks:
            if run.engine_kwargs.get("enable_prefix_caching"):
                llm.reset_prefix_cache()  # each task starts cold: no hits carried over
            tasks[spec["name"]] = run_vllm_task(llm, spec["waves"])
    finally:
        stop_watching.set()  # before `llm` goes away and its processes exit normally
    return {"engine": run.name, "start_s": start_s, "tasks": tasks}


def watch_engine_processes(result_path: Path, interval_s: float = 2.0) -> threading.Event:
    """Fail fast if an engine process dies under us (e.g. reaped by someone's `pkill`).

    vLLM's offline client then waits for outputs forever; we record the error and exit.
    """
    import psutil

    engine_processes = psutil.Process().children(recursive=True)
    stop = threading.Event()

    def gone(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def watch() -> None:
        while not stop.wait(interval_s):
            dead = [f"{p.pid}" for p in engine_processes if gone(p)]
            if dead and not stop.is_set():
                error = f"EngineDied: engine process(es) {', '.join(dead)} exited mid-run"
                result_path.write_text(json.dumps({"error": error}))
                os._exit(1)

    threading.Thread(target=watch, name="engine-watchdog", daemon=True).start()
    return stop


def warm_up_vllm(llm: Any) -> None:
    """The first requests of a fresh CPU engine are several times slower (kernel set-up)."""
    from vllm import SamplingParams

    filler = " ".join(pair_questions()[-60:])  # long, and shares no prefix with the workloads
    conversations = [[{"role": "user", "content": filler}]] + [
        [{"role": "user", "content": f"Say hello number {i}."}] for i in range(4)
    ]
    llm.chat(conversations, SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)
    llm.chat(conversations[1:2], SamplingParams(max_tokens=8, temperature=0), use_tqdm=False)


def run_vllm_task(llm: Any, waves: list[list[dict]]) -> dict[str, Any]:
    from vllm import SamplingParams

    before = engine_counters(llm)
    records, wave_walls = [], []
    for wave in waves:
        params = [
            SamplingParams(max_tokens=r["max_tokens"], ignore_eos=r["ignore_eos"], temperature=0)
            for r in wave
        ]
        started = time.perf_counter()
        outputs = llm.chat([r["messages"] for r in wave], params, use_tqdm=False)
        wave_walls.append(time.perf_counter() - started)
        records.append([request_record(output) for output in outputs])
    after = engine_counters(llm)
    counters = {name: after[name] - before.get(name, 0.0) for name in after}
    return {"wave_wall_s": wave_walls, "waves": records, "counters": counters}


def request_record(output: Any) -> dict[str, Any]:
    completion = output.outputs[0]
    metrics = output.metrics
    token_ids = list(completion.token_ids)
    return {
        "prompt_tokens": len(output.prompt_token_ids or []),
        "output_tokens": len(token_ids),
        "cached_tokens": output.num_cached_tokens or 0,
        "ttft_s": getattr(metrics, "first_token_latency", None),
        "finish_reason": completion.finish_reason,
        "output_digest": hashlib.sha1(json.dumps(token_ids).encode()).hexdigest()[:16],
    }


def engine_counters(llm: Any) -> dict[str, float]:
    """vLLM's Prometheus counters we read, summed over engines; vectors per position."""
    from vllm.v1.metrics.reader import Counter, Vector

    values: dict[str, float] = {}
    for metric in llm.get_metrics():
        if not any(marker in metric.name for marker in ENGINE_COUNTER_MARKERS):
            continue
        if isinstance(metric, Counter):
            values[metric.name] = values.get(metric.name, 0.0) + metric.value
        elif isinstance(metric, Vector):
            for position, value in enumerate(metric.values):
                key = f"{metric.name}[{position}]"
                values[key] = values.get(key, 0.0) + value
    return values


# ---- child side: static batching with transformers ---------------------------------------------


def run_static_batching(run: EngineRun, result_path: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(run.engine_kwargs.get("torch_threads", 1))
    dtype = getattr(torch, run.engine_kwargs.get("dtype", "float32"))
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so generation continues
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir()), dtype=dtype).eval()
    start_s = time.perf_counter() - started
    batch_size = run.engine_kwargs["batch_size"]
    generate_batch(model, tokenizer, [chat([{"role": "user", "content": "Hi"}], 4)] * 2)
    tasks = {}
    for spec in run.tasks:
        requests = [r for wave in spec["waves"] for r in wave]
        batches = [requests[i : i + batch_size] for i in range(0, len(requests), batch_size)]
        tasks[spec["name"]] = {"batches": [generate_batch(model, tokenizer, b) for b in batches]}
    return {
        "engine": run.name,
        "start_s": start_s,
        "batch_size": batch_size,
        "dtype": run.engine_kwargs.get("dtype", "float32"),
        "tasks": tasks,
    }


def generate_batch(model: Any, tokenizer: Any, requests: list[dict]) -> dict[str, Any]:
    """One static batch: padded together, decoded until its longest request is done."""
    import torch

    texts = [
        tokenizer.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
        for r in requests
    ]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    longest = max(r["max_tokens"] for r in requests)
    started = time.perf_counter()
    with torch.inference_mode():
        generated = model.generate(
            **encoded,
            max_new_tokens=longest,
            min_new_tokens=longest,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    wall_s = time.perf_counter() - started
    return {
        "wall_s": wall_s,
        "requests": len(requests),
        "useful_tokens": sum(r["max_tokens"] for r in requests),
        "decoded_slots": len(requests) * (generated.shape[1] - encoded["input_ids"].shape[1]),
    }


# ---- analysis (parent side) ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise_vllm_task(result: dict[str, Any]) -> dict[str, Any]:
    requests = [r for wave in result["waves"] for r in wave]
    wall_s = sum(result["wave_wall_s"])
    output_tokens = sum(r["output_tokens"] for r in requests)
    prompt_tokens = sum(r["prompt_tokens"] for r in requests)
    return {
        "requests": len(requests),
        "wall_s": wall_s,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "cached_prompt_tokens": sum(r["cached_tokens"] for r in requests),
        "output_tokens_per_s": output_tokens / wall_s,
        "prompt_tokens_per_s": prompt_tokens / wall_s,
    }


def ttft_summary(records: Sequence[dict]) -> dict[str, float | None]:
    values = [r["ttft_s"] for r in records if r["ttft_s"] is not None]
    return {
        "mean_s": statistics.fmean(values) if values else None,
        "p50_s": percentile(values, 50),
        "max_s": max(values) if values else None,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def analyse_continuous(plain: dict, static: dict, requests: list[dict]) -> dict[str, Any]:
    if "error" in plain or "error" in static:
        return {"error": plain.get("error") or static.get("error")}
    vllm = summarise_vllm_task(plain["tasks"]["continuous"])
    batches = static["tasks"]["continuous"]["batches"]
    static_wall = sum(b["wall_s"] for b in batches)
    useful = sum(b["useful_tokens"] for b in batches)
    slots = sum(b["decoded_slots"] for b in batches)
    lengths = [r["max_tokens"] for r in requests]
    static_summary = {
        "batch_size": static["batch_size"],
        "dtype": static.get("dtype"),
        "batches": len(batches),
        "wall_s": static_wall,
        "output_tokens": useful,
        "output_tokens_per_s": useful / static_wall,
        "padded_slot_fraction": 1 - useful / slots,
    }
    return {
        "requests": len(requests),
        "output_length_tokens": {
            "min": min(lengths),
            "p50": percentile(lengths, 50),
            "max": max(lengths),
            "total": sum(lengths),
        },
        "continuous_vllm": vllm,
        "static_transformers": static_summary,
        "throughput_ratio": vllm["output_tokens_per_s"] / static_summary["output_tokens_per_s"],
    }


def analyse_prefix_side(result: dict[str, Any]) -> dict[str, Any]:
    task_result = result["tasks"]["prefix"]
    cold, warm = task_result["waves"]
    counters = task_result["counters"]
    queries = counters.get("vllm:prefix_cache_queries", 0.0)
    return {
        **summarise_vllm_task(task_result),
        "cold_request_ttft_s": cold[0]["ttft_s"],
        "cold_request_wall_s": task_result["wave_wall_s"][0],
        "warm_requests_ttft": ttft_summary(warm),
        "warm_requests_wall_s": task_result["wave_wall_s"][1],
        "prefix_cache_hit_rate": ratio(counters.get("vllm:prefix_cache_hits", 0.0), queries),
        "prefix_cache_hit_tokens": counters.get("vllm:prefix_cache_hits", 0.0),
        "prefix_cache_query_tokens": queries,
    }


def analyse_prefix(plain: dict, prefix_on: dict, system_prompt_tokens: int) -> dict[str, Any]:
    if "error" in plain or "error" in prefix_on:
        return {"error": plain.get("error") or prefix_on.get("error")}
    off, on = analyse_prefix_side(plain), analyse_prefix_side(prefix_on)
    return {
        "system_prompt_tokens": system_prompt_tokens,
        "off": off,
        "on": on,
        "warm_ttft_speedup": ratio(
            off["warm_requests_ttft"]["mean_s"], on["warm_requests_ttft"]["mean_s"]
        ),
        "warm_wall_speedup": ratio(off["warm_requests_wall_s"], on["warm_requests_wall_s"]),
        "throughput_ratio": ratio(on["output_tokens_per_s"], off["output_tokens_per_s"]),
    }


def analyse_speculative(plain: dict, spec: dict, config: dict[str, Any]) -> dict[str, Any]:
    if "error" in spec:
        return {"config": config, "error": spec["error"], "log": spec.get("log")}
    if "error" in plain:
        return {"config": config, "error": plain["error"]}
    results: dict[str, Any] = {}
    for name in (n for n in spec["tasks"] if n.startswith("spec/")):
        off_task, on_task = plain["tasks"][name], spec["tasks"][name]
        off, on = summarise_vllm_task(off_task), summarise_vllm_task(on_task)
        counters = on_task["counters"]
        drafts = counters.get("vllm:spec_decode_num_drafts", 0.0)
        draft_tokens = counters.get("vllm:spec_decode_num_draft_tokens", 0.0)
        accepted = counters.get("vllm:spec_decode_num_accepted_tokens", 0.0)
        digests_off = [r["output_digest"] for w in off_task["waves"] for r in w]
        digests_on = [r["output_digest"] for w in on_task["waves"] for r in w]
        results[name.removeprefix("spec/")] = {
            "off": off,
            "on": on,
            "speedup": on["output_tokens_per_s"] / off["output_tokens_per_s"],
            "drafts": drafts,
            "draft_tokens": draft_tokens,
            "accepted_tokens": accepted,
            "acceptance_rate": ratio(accepted, draft_tokens),
            "mean_tokens_per_verify_step": (1 + accepted / drafts) if drafts else None,
            "identical_outputs": sum(a == b for a, b in zip(digests_off, digests_on, strict=True)),
        }
    return {"config": config, "workloads": results}


def analyse_audit(
    prefix_on: dict, requests: list[dict], tokenizer: Any, options: LeverOptions
) -> dict[str, Any]:
    if "error" in prefix_on:
        return {"error": prefix_on["error"]}
    counts = audit_counts(prefix_on["tasks"]["audit"])
    return prompt_audit.audit_prompts(
        chat_prompt_token_ids(tokenizer, requests),
        prompt_audit.tier_input_prices(),
        measured_hit_tokens=counts["hit_tokens"],
        measured_query_tokens=counts["query_tokens"],
        trim_to_tokens=options.trim_to_tokens,
    )


# ---- the run ---------------------------------------------------------------------------------


def run_benchmark(options: LeverOptions) -> dict[str, Any]:
    tokenizer = load_tokenizer()
    system_prompt = build_system_prompt(tokenizer, options.system_prompt_tokens)
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
        requests = audit_requests(system_prompt, options.audit_requests, max_tokens=8)
        report["prompt_audit"] = analyse_audit(
            results["prefix-caching"], requests, tokenizer, options
        )
    return report


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# ---- output --------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"Engine levers on {report['model']} (load avg before/after: "
        f"{report['machine']['load_avg_1_5_15_before'][0]:.2f} / "
        f"{report['machine']['load_avg_1_5_15_after'][0]:.2f} on "
        f"{report['machine']['cpus']} CPUs)"
    ]
    lines += _format_continuous(report.get("continuous_batching"))
    lines += _format_prefix(report.get("prefix_caching"))
    lines += _format_speculative(report.get("speculative_decoding"))
    if audit := report.get("prompt_audit"):
        lines += [
            "",
            prompt_audit.format_audit(audit)
            if "error" not in audit
            else f"Prompt audit: error {audit['error']}",
        ]
    for name, error in report["errors"].items():
        lines.append(f"ERROR in {name}: {error}")
    return "\n".join(lines)


def _format_continuous(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"1. Continuous batching: error {section['error']}"]
    cb, st = section["continuous_vllm"], section["static_transformers"]
    lengths = section["output_length_tokens"]
    return [
        "",
        f"1. Continuous batching: {section['requests']} requests, output "
        f"{lengths['min']}-{lengths['max']} tokens (p50 {lengths['p50']})",
        f"   vLLM continuous     {cb['output_tokens_per_s']:8.1f} output tok/s "
        f"({cb['wall_s']:.1f} s)",
        f"   static HF generate  {st['output_tokens_per_s']:8.1f} output tok/s "
        f"({st['wall_s']:.1f} s, batch {st['batch_size']}, "
        f"{st['padded_slot_fraction']:.0%} of decode slots padding)",
        f"   ratio               {section['throughput_ratio']:8.2f}x",
    ]


def _format_prefix(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"2. Prefix caching: error {section['error']}"]
    lines = [
        "",
        f"2. Prefix caching: {section['on']['requests']} requests sharing a "
        f"{section['system_prompt_tokens']}-token system prompt",
    ]
    for side in ("off", "on"):
        s = section[side]
        lines.append(
            f"   {side:<3} cold TTFT {_fmt(s['cold_request_ttft_s'], '.3f')} s, warm TTFT mean "
            f"{_fmt(s['warm_requests_ttft']['mean_s'], '.3f')} s, "
            f"{s['prompt_tokens_per_s']:.0f} prompt tok/s, {s['output_tokens_per_s']:.1f} "
            f"output tok/s, hit rate {_fmt(s['prefix_cache_hit_rate'], '.1%')}"
        )
    lines.append(
        f"   warm TTFT speed-up {_fmt(section['warm_ttft_speedup'])}x, "
        f"throughput ratio {_fmt(section['throughput_ratio'])}x"
    )
    return lines


def _format_speculative(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"3. Speculative decoding ({section['config']}): error {section['error']}"]
    lines = ["", f"3. Speculative decoding, n-gram ({section['config']})"]
    for name, w in section["workloads"].items():
        lines.append(
            f"   {name:<18} off {w['off']['output_tokens_per_s']:6.1f} tok/s, on "
            f"{w['on']['output_tokens_per_s']:6.1f} tok/s ({w['speedup']:.2f}x), acceptance "
            f"{_fmt(w['acceptance_rate'], '.1%')}, identical outputs "
            f"{w['identical_outputs']}/{w['on']['requests']}"
        )
    return lines


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, bars) for title, bars in _plot_panels(report) if bars]
    written: list[Path] = []
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
        for ax, (title, bars) in zip(axes[0], panels, strict=True):
            labels, values = zip(*bars, strict=True)
            ax.bar(labels, values, color=["tab:grey", "tab:green"] * (len(values) // 2 + 1))
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.suptitle(f"Engine levers on {report['model']}, each off vs on")
        fig.tight_layout()
        path = out.with_name(f"{out.stem}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    audit = report.get("prompt_audit")
    if audit and "error" not in audit:
        written.append(prompt_audit.plot_audit(audit, out.with_name(f"{out.stem}_audit.png")))
    return written


def _plot_panels(report: dict[str, Any]) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    cb = report.get("continuous_batching")
    if cb and "error" not in cb:
        yield (
            f"Continuous batching: output tok/s ({cb['throughput_ratio']:.1f}x)",
            [
                ("static HF", cb["static_transformers"]["output_tokens_per_s"]),
                ("vLLM continuous", cb["continuous_vllm"]["output_tokens_per_s"]),
            ],
        )
    prefix = report.get("prefix_caching")
    if prefix and "error" not in prefix:
        yield (
            "Prefix caching: mean TTFT of warm requests (s)",
            [
                ("cache off", prefix["off"]["warm_requests_ttft"]["mean_s"] or 0.0),
                ("cache on", prefix["on"]["warm_requests_ttft"]["mean_s"] or 0.0),
            ],
        )
    spec = report.get("speculative_decoding")
    if spec and "error" not in spec:
        bars = []
        for name, w in spec["workloads"].items():
            bars += [
                (f"{name} off", w["off"]["output_tokens_per_s"]),
                (f"{name} on", w["on"]["output_tokens_per_s"]),
            ]
        yield ("n-gram speculative decoding: output tok/s", bars)


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
