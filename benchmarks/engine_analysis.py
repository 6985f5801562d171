"""Analysis of the engine benchmarks' raw results (parent side): one section per lever."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks import prompt_audit
from benchmarks.engine_plan import LeverOptions
from benchmarks.engine_runner import audit_counts
from benchmarks.engine_workloads import chat_prompt_token_ids


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
