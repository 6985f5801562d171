"""Engine subprocesses of the engine benchmarks, child side: run one EngineRun, write results.

`child_main` is what `python -m benchmarks.engine_levers --child SPEC` runs: a vLLM engine
(`run_vllm`) or the static-batching transformers baseline (`run_static_batching`), each task's
waves in order, and per-request records plus vLLM's counters written as JSON for the parent.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.engine_runner import EngineRun
from benchmarks.engine_workloads import chat, model_dir, pair_questions

ENGINE_COUNTER_MARKERS = ("prefix_cache", "spec_decode", "num_preemptions")


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
