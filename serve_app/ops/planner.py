"""Capacity and cost planner: does a tier fit its GPUs, how many sequences, what a token costs.

The seed lesson's formulas, applied to a Serve config (`plan`) or to bare numbers (`memory`,
`cost`):

- weights = parameters x bytes per parameter (AWQ/GPTQ keep embeddings and lm_head in 16-bit);
- KV-cache bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element;
- max concurrent sequences = free HBM / (KV bytes per token x context length);
- $/M tokens = GPU $/hour x GPUs / (tokens/s x 3600) x 1e6 (serve_app.accounting.cost_model);
- break-even tokens/s for a target $/M, and self-host vs API break-even tokens per month.

    python -m serve_app.ops.planner plan configs/production.yaml --small-share 0.7
    python -m serve_app.ops.planner memory --arch llama-3.1-8b --gpu A100-80G --context-tokens 4096
    python -m serve_app.ops.planner cost --gpu-usd-per-hour 3.5 --tokens-per-s 1000

Model facts are a small built-in table (no download); `--arch` overrides them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from serve_app.accounting.cost_model import break_even_tokens_per_s, usd_per_million_tokens
from serve_app.config import CascadeConfig, TierConfig, TierName

GIB = 1024**3
MIB = 1024**2
KIB = 1024
HOURS_PER_MONTH = 720.0  # the seed lesson's month: 30 days x 24 h
BUILDER_IMPORT_PATH = "serve_app.builder:build_app"

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
}
# vLLM `quantization` / `dtype` / `kv_cache_dtype` values -> our precision names.
_QUANTIZATION_PRECISION = {
    "awq": "int4",
    "awq_marlin": "int4",
    "auto_awq": "int4",
    "gptq": "int4",
    "gptq_marlin": "int4",
    "auto_gptq": "int4",
    "fp8": "fp8",
    "experts_int8": "int8",
}
_DTYPE_PRECISION = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "auto": "bf16",
}

# Memory each device reports to CUDA (nvidia-smi), not the marketing figure.
GPU_MEMORY_MIB: dict[str, int] = {
    "L4": 23034,
    "A10G": 23028,
    "L40S": 46068,
    "A100-40G": 40960,
    "A100-80G": 81920,
    "H100": 81559,
    "mig-3g.40gb": 40192,  # half of an A100-80G / H100 (MIG, see deploy/rayservice-mig.yaml)
}
MIG_CAPABLE = ("A100-40G", "A100-80G", "H100")


@dataclass(frozen=True)
class ModelArch:
    """What the planner needs to know about a transformer (from its config.json)."""

    name: str
    params: float
    layers: int
    kv_heads: int
    head_dim: int
    unquantized_params: float = 0.0  # embed_tokens + lm_head, kept 16-bit by AWQ/GPTQ


def _llama31(name: str, params: float, layers: int, hidden: int) -> ModelArch:
    vocab = 128_256
    return ModelArch(
        name, params, layers, kv_heads=8, head_dim=128, unquantized_params=2 * vocab * hidden
    )  # untied embed_tokens + lm_head


MODEL_ARCHS: dict[str, ModelArch] = {
    "llama-3.1-8b": _llama31("llama-3.1-8b", 8_030_261_248, layers=32, hidden=4096),
    "llama-3.1-70b": _llama31("llama-3.1-70b", 70_553_706_496, layers=80, hidden=8192),
}


# ---- the seed lesson's formulas -----------------------------------------------------------


def weights_bytes(params: float, bytes_per_param: float, unquantized_params: float = 0.0) -> float:
    """Weights in HBM; `unquantized_params` stay 16-bit when the rest is quantised."""
    if bytes_per_param >= BYTES_PER_ELEMENT["bf16"]:
        return params * bytes_per_param
    quantized = params - unquantized_params
    return quantized * bytes_per_param + unquantized_params * BYTES_PER_ELEMENT["bf16"]


def kv_bytes_per_token(
    layers: int, kv_heads: int, head_dim: int, bytes_per_element: float
) -> float:
    """KV cache of one token: K and V, for every layer and KV head."""
    return 2 * layers * kv_heads * head_dim * bytes_per_element


def kv_budget_bytes(
    hbm_bytes_per_gpu: float,
    gpus: int,
    gpu_memory_utilization: float,
    weights: float,
    overhead_bytes_per_gpu: float,
) -> float:
    """HBM left for the KV cache on a replica: vLLM's share of HBM minus weights and overhead."""
    usable = hbm_bytes_per_gpu * gpu_memory_utilization - overhead_bytes_per_gpu
    return max(0.0, gpus * usable - weights)


def max_concurrent_sequences(kv_budget: float, kv_per_token: float, context_tokens: int) -> int:
    """Sequences of `context_tokens` whose KV cache fits in `kv_budget` at the same time."""
    return int(kv_budget // (kv_per_token * context_tokens))


def min_gpus_for_weights(
    weights: float,
    hbm_bytes_per_gpu: float,
    gpu_memory_utilization: float,
    overhead_bytes_per_gpu: float,
) -> int:
    """Fewest GPUs (tensor-parallel) whose HBM holds the weights, before any KV cache."""
    usable = hbm_bytes_per_gpu * gpu_memory_utilization - overhead_bytes_per_gpu
    return math.ceil(weights / usable) if usable > 0 else sys.maxsize


def replicas_for_load(peak_tokens_per_s: float, replica_tokens_per_s: float) -> int:
    return max(1, math.ceil(peak_tokens_per_s / replica_tokens_per_s))


def self_host_break_even_tokens_per_month(
    gpu_usd_per_hour: float, gpus: int, api_usd_per_million: float
) -> float:
    """Monthly tokens above which an always-on replica is cheaper than a per-token API."""
    return gpu_usd_per_hour * gpus * HOURS_PER_MONTH / api_usd_per_million * 1e6


def blended_usd_per_million(
    small: float, large: float, small_share: float, escalation_rate: float = 0.0
) -> float:
    """$/M over both tiers: `small_share` of tokens routed small; escalations pay both tiers."""
    return small_share * small + (1 - small_share) * large + small_share * escalation_rate * large


# ---- a tier of a Serve config --------------------------------------------------------------


@dataclass(frozen=True)
class TierPlan:
    name: str
    arch: ModelArch
    accelerator: str
    gpus: int
    weights_precision: str
    kv_precision: str
    hbm_bytes_per_gpu: float
    gpu_memory_utilization: float
    overhead_bytes_per_gpu: float
    max_model_len: int
    max_num_seqs: int | None
    typical_context_tokens: int
    usd_per_hour: float
    decode_tokens_per_s: float
    prefill_tokens_per_s: float

    @property
    def weights(self) -> float:
        bytes_per_param = BYTES_PER_ELEMENT[self.weights_precision]
        return weights_bytes(self.arch.params, bytes_per_param, self.arch.unquantized_params)

    @property
    def kv_per_token(self) -> float:
        a = self.arch
        return kv_bytes_per_token(
            a.layers, a.kv_heads, a.head_dim, BYTES_PER_ELEMENT[self.kv_precision]
        )

    @property
    def kv_budget(self) -> float:
        return kv_budget_bytes(
            self.hbm_bytes_per_gpu,
            self.gpus,
            self.gpu_memory_utilization,
            self.weights,
            self.overhead_bytes_per_gpu,
        )

    def max_sequences(self, context_tokens: int) -> int:
        return max_concurrent_sequences(self.kv_budget, self.kv_per_token, context_tokens)

    @property
    def usd_per_million_output(self) -> float:
        return usd_per_million_tokens(self.usd_per_hour, self.gpus, self.decode_tokens_per_s)

    @property
    def usd_per_million_input(self) -> float:
        return usd_per_million_tokens(self.usd_per_hour, self.gpus, self.prefill_tokens_per_s)

    def with_gpus(self, gpus: int) -> TierPlan:
        return replace(self, gpus=gpus)


def _precision(engine_kwargs: dict[str, Any]) -> tuple[str, str]:
    """(weights, KV cache) precision implied by vLLM engine arguments."""
    dtype = _DTYPE_PRECISION.get(str(engine_kwargs.get("dtype", "auto")), "bf16")
    quantization = engine_kwargs.get("quantization")
    weights = _QUANTIZATION_PRECISION.get(str(quantization), dtype) if quantization else dtype
    kv_dtype = str(engine_kwargs.get("kv_cache_dtype", "auto"))
    kv = "fp8" if kv_dtype.startswith("fp8") else dtype
    return weights, kv


def arch_for_source(source: str) -> ModelArch | None:
    """The built-in architecture whose name appears in a model id, e.g. `...Llama-3.1-70B...`."""
    normalized = source.lower().replace("meta-llama-", "llama-")
    for name, arch in MODEL_ARCHS.items():
        if name in normalized:
            return arch
    return None


def parse_arch(value: str) -> ModelArch:
    """A built-in name, or `layers=32,kv_heads=8,head_dim=128,params=8.03e9` (numbers)."""
    if value in MODEL_ARCHS:
        return MODEL_ARCHS[value]
    fields: dict[str, float] = {}
    for item in value.split(","):
        key, sep, number = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"unknown architecture {value!r}: use one of {sorted(MODEL_ARCHS)} or "
                "layers=…,kv_heads=…,head_dim=…,params=…"
            )
        fields[key.strip()] = float(number)
    try:
        return ModelArch(
            name="custom",
            params=fields.pop("params"),
            layers=int(fields.pop("layers")),
            kv_heads=int(fields.pop("kv_heads")),
            head_dim=int(fields.pop("head_dim")),
            unquantized_params=fields.pop("unquantized_params", 0.0),
        )
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"architecture {value!r} is missing {e}") from e


def _hbm_bytes(accelerator: str | None, override_gib: float | None) -> float:
    if override_gib is not None:
        return override_gib * GIB
    if accelerator in GPU_MEMORY_MIB:
        return GPU_MEMORY_MIB[accelerator] * MIB
    raise ValueError(
        f"unknown HBM size for accelerator {accelerator!r}; known: {sorted(GPU_MEMORY_MIB)}. "
        "Pass --gpu-memory-gib TIER=GiB."
    )


def _mig_profile(tier: TierConfig) -> str | None:
    """`mig-3g.40gb` when the tier's bundles ask for a `mig_3g_40gb` resource (MIG variant)."""
    pg = tier.placement_group_config or {}
    bundles = [pg.get("bundle_per_worker") or {}, *(pg.get("bundles") or [])]
    for key in (key for bundle in bundles for key in bundle):
        if key.startswith("mig_"):
            return "mig-" + key.removeprefix("mig_").replace("_", ".", 1)  # mig_3g_40gb
    return None


def plan_tier(
    name: TierName,
    tier: TierConfig,
    *,
    arch: ModelArch | None = None,
    hbm_gib: float | None = None,
    overhead_gib: float = 1.5,
    typical_context_tokens: int = 1024,
) -> TierPlan:
    """Everything the planner derives for one tier of a validated cascade config."""
    arch = arch or arch_for_source(tier.model_source) or arch_for_source(tier.model_id)
    if arch is None:
        raise ValueError(
            f"tier {name!r}: unknown architecture of {tier.model_source!r}; "
            f"pass --arch {name}=NAME (one of {sorted(MODEL_ARCHS)}) or its numbers"
        )
    kwargs = tier.engine_kwargs
    weights_precision, kv_precision = _precision(kwargs)
    gpus = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
    accelerator = tier.accelerator_type or _mig_profile(tier) or "?"
    return TierPlan(
        name=name,
        arch=arch,
        accelerator=accelerator,
        gpus=gpus,
        weights_precision=weights_precision,
        kv_precision=kv_precision,
        hbm_bytes_per_gpu=_hbm_bytes(accelerator, hbm_gib),
        gpu_memory_utilization=float(kwargs.get("gpu_memory_utilization", 0.9)),
        overhead_bytes_per_gpu=overhead_gib * GIB,
        max_model_len=int(kwargs.get("max_model_len", 8192)),
        max_num_seqs=kwargs.get("max_num_seqs"),
        typical_context_tokens=typical_context_tokens,
        usd_per_hour=tier.cost.gpu_usd_per_hour,
        decode_tokens_per_s=tier.cost.decode_tokens_per_s,
        prefill_tokens_per_s=tier.cost.prefill_tokens_per_s,
    )


def load_cascade_config(path: Path) -> CascadeConfig:
    """The cascade's args from a Serve config, or from a KubeRay RayService's serveConfigV2."""
    document = yaml.safe_load(path.read_text())
    serve_config = document
    if isinstance(document.get("spec"), dict) and "serveConfigV2" in document["spec"]:
        serve_config = yaml.safe_load(document["spec"]["serveConfigV2"])
    for app in serve_config.get("applications", []):
        if app.get("import_path") == BUILDER_IMPORT_PATH:
            return CascadeConfig.model_validate(app.get("args", {}))
    raise ValueError(f"{path}: no application with import_path {BUILDER_IMPORT_PATH}")


# ---- advice --------------------------------------------------------------------------------


def right_sizing_advice(plan: TierPlan, target_usd_per_million: float) -> list[str]:
    """Plain-language findings for one tier, worst first."""
    advice: list[str] = []
    per_gpu = plan.weights / plan.gpus
    usable = plan.hbm_bytes_per_gpu * plan.gpu_memory_utilization - plan.overhead_bytes_per_gpu
    if per_gpu > usable:
        advice.append(
            f"{plan.name}: weights need {per_gpu / GIB:.1f} GiB per GPU but only "
            f"{usable / GIB:.1f} GiB is usable: raise tensor_parallel_size or quantise."
        )
        return advice
    at_max_len = plan.max_sequences(plan.max_model_len)
    if at_max_len < 1:
        advice.append(
            f"{plan.name}: not one {plan.max_model_len}-token sequence fits the KV cache "
            f"({plan.kv_budget / GIB:.1f} GiB): lower max_model_len."
        )
    at_typical = plan.max_sequences(plan.typical_context_tokens)
    if plan.max_num_seqs and plan.max_num_seqs > at_typical:
        advice.append(
            f"{plan.name}: max_num_seqs {plan.max_num_seqs} > {at_typical} sequences of "
            f"{plan.typical_context_tokens} tokens that fit the KV cache: expect preemptions "
            "(vllm:num_preemptions) unless prompts are shorter; lower it or free HBM."
        )
    if plan.gpus > 1:
        single = plan.with_gpus(1)
        if single.kv_budget > 0:
            advice.append(
                f"{plan.name}: the weights also fit one GPU, leaving "
                f"{single.max_sequences(plan.typical_context_tokens)} sequences of "
                f"{plan.typical_context_tokens} tokens (vs {at_typical} on {plan.gpus}); "
                "TP=1 replicas avoid all-reduce traffic if that batch is enough."
            )
    needed = break_even_tokens_per_s(plan.usd_per_hour, plan.gpus, target_usd_per_million)
    if plan.decode_tokens_per_s < needed:
        advice.append(
            f"{plan.name}: reaching ${target_usd_per_million:.2f}/M output needs "
            f"{needed:,.0f} tok/s per replica; the config assumes {plan.decode_tokens_per_s:,.0f}."
        )
    if plan.gpus == 1 and plan.accelerator not in MIG_CAPABLE and at_max_len < 8:
        mig = replace(plan, hbm_bytes_per_gpu=GPU_MEMORY_MIB["mig-3g.40gb"] * MIB)
        advice.append(
            f"{plan.name}: {plan.accelerator} holds only {at_max_len} sequences of "
            f"{plan.max_model_len} tokens; a MIG 3g.40gb slice (two per A100-80G) holds "
            f"{mig.max_sequences(plan.max_model_len)} (deploy/rayservice-mig.yaml)."
        )
    return advice


# ---- output --------------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    text_columns = 3  # tier, model, GPUs left-aligned; numbers right-aligned
    lines = [
        "  ".join(
            cell.ljust(w) if i < text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plan_report(
    plans: dict[TierName, TierPlan],
    *,
    small_share: float,
    escalation_rate: float,
    target_usd_per_million: float,
    api_usd_per_million: float,
    peak_output_tokens_per_s: float | None,
) -> str:
    header = [
        "tier",
        "model",
        "GPUs x HBM",
        "weights",
        "KV/token",
        "KV cache",
        "VRAM/replica",
        "seqs@max_len",
        "seqs@typical",
        "$/h",
        "$/M in",
        "$/M out",
        "break-even tok/s",
    ]
    rows = [header]
    for plan in plans.values():
        break_even = break_even_tokens_per_s(plan.usd_per_hour, plan.gpus, target_usd_per_million)
        rows.append(
            [
                plan.name,
                f"{plan.arch.name} {plan.weights_precision}",
                f"{plan.gpus}x {plan.accelerator} {plan.hbm_bytes_per_gpu / GIB:.1f}G",
                f"{plan.weights / GIB:.1f} GiB",
                f"{plan.kv_per_token / KIB:.0f} KiB",
                f"{plan.kv_budget / GIB:.1f} GiB",
                f"{plan.gpus * plan.hbm_bytes_per_gpu * plan.gpu_memory_utilization / GIB:.1f} GiB",
                f"{plan.max_sequences(plan.max_model_len)} @{plan.max_model_len}",
                f"{plan.max_sequences(plan.typical_context_tokens)} @{plan.typical_context_tokens}",
                f"{plan.usd_per_hour * plan.gpus:.2f}",
                f"{plan.usd_per_million_input:.3f}",
                f"{plan.usd_per_million_output:.3f}",
                f"{break_even:,.0f}",
            ]
        )
    small, large = plans["small"], plans["large"]
    out = [_table(rows), ""]
    out.append(
        f"VRAM/replica = GPUs x HBM x gpu_memory_utilization; KV cache = that minus weights and "
        f"{small.overhead_bytes_per_gpu / GIB:.1f} GiB/GPU of activations and CUDA graphs. "
        f"Break-even tok/s: output rate one replica needs for ${target_usd_per_million:.2f}/M."
    )
    blended_in = blended_usd_per_million(
        small.usd_per_million_input, large.usd_per_million_input, small_share, escalation_rate
    )
    blended_out = blended_usd_per_million(
        small.usd_per_million_output, large.usd_per_million_output, small_share, escalation_rate
    )
    out.append(
        f"Blended at {small_share:.0%} small / {1 - small_share:.0%} large, "
        f"{escalation_rate:.0%} of small-tier answers escalated: ${blended_in:.3f}/M input, "
        f"${blended_out:.3f}/M output (all on large: ${large.usd_per_million_input:.3f} / "
        f"${large.usd_per_million_output:.3f})."
    )
    for plan in plans.values():
        tokens = self_host_break_even_tokens_per_month(
            plan.usd_per_hour, plan.gpus, api_usd_per_million
        )
        monthly_usd = plan.usd_per_hour * plan.gpus * HOURS_PER_MONTH
        out.append(
            f"{plan.name}: one always-on replica costs ${monthly_usd:,.0f}/month; above "
            f"{tokens / 1e9:,.2f} B tokens/month it beats an API at "
            f"${api_usd_per_million:.2f}/M."
        )
    if peak_output_tokens_per_s:
        out.append(_gpus_needed(plans, small_share, escalation_rate, peak_output_tokens_per_s))
    advice = [
        line
        for plan in plans.values()
        for line in right_sizing_advice(plan, target_usd_per_million)
    ]
    if advice:
        out.append("")
        out.append("Right-sizing:")
        out.extend(f"- {line}" for line in advice)
    return "\n".join(out)


def _gpus_needed(
    plans: dict[TierName, TierPlan],
    small_share: float,
    escalation_rate: float,
    peak_tokens_per_s: float,
) -> str:
    load = {
        "small": peak_tokens_per_s * small_share,
        "large": peak_tokens_per_s * (1 - small_share + small_share * escalation_rate),
    }
    parts = []
    for name, plan in plans.items():
        replicas = replicas_for_load(load[name], plan.decode_tokens_per_s)
        parts.append(
            f"{name} {replicas} replicas = {replicas * plan.gpus} GPUs ({load[name]:,.0f} tok/s)"
        )
    return f"At a peak of {peak_tokens_per_s:,.0f} output tok/s: " + "; ".join(parts) + "."


# ---- CLI -----------------------------------------------------------------------------------


def _tier_values(items: Sequence[str], convert: Any, flag: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in items:
        tier, sep, value = item.partition("=")
        if not sep or tier not in ("small", "large"):
            raise SystemExit(f"{flag} takes TIER=VALUE with TIER small or large, got {item!r}")
        values[tier] = convert(value)
    return values


def _cmd_plan(args: argparse.Namespace) -> str:
    config = load_cascade_config(args.config)
    archs = _tier_values(args.arch, parse_arch, "--arch")
    hbm = _tier_values(args.gpu_memory_gib, float, "--gpu-memory-gib")
    plans = {
        name: plan_tier(
            name,
            tier,
            arch=archs.get(name),
            hbm_gib=hbm.get(name),
            overhead_gib=args.overhead_gib,
            typical_context_tokens=args.typical_context_tokens,
        )
        for name, tier in config.tiers.items()
    }
    return f"Plan for {args.config}\n\n" + plan_report(
        plans,
        small_share=args.small_share,
        escalation_rate=args.escalation_rate,
        target_usd_per_million=args.target_usd_per_million,
        api_usd_per_million=args.api_usd_per_million,
        peak_output_tokens_per_s=args.peak_output_tokens_per_s,
    )


def _cmd_memory(args: argparse.Namespace) -> str:
    arch = args.arch
    hbm = _hbm_bytes(args.gpu, args.gpu_memory_gib)
    weights = weights_bytes(arch.params, BYTES_PER_ELEMENT[args.precision], arch.unquantized_params)
    kv_token = kv_bytes_per_token(
        arch.layers, arch.kv_heads, arch.head_dim, BYTES_PER_ELEMENT[args.kv_precision]
    )
    overhead = args.overhead_gib * GIB
    budget = kv_budget_bytes(hbm, args.tp, args.gpu_memory_utilization, weights, overhead)
    min_gpus = min_gpus_for_weights(weights, hbm, args.gpu_memory_utilization, overhead)
    per_sequence = kv_token * args.context_tokens
    return "\n".join(
        [
            f"{arch.name}: {arch.params / 1e9:.2f} B params, {arch.layers} layers, "
            f"{arch.kv_heads} KV heads x {arch.head_dim}",
            f"weights ({args.precision}): {weights / 1e9:.1f} GB = {weights / GIB:.1f} GiB",
            f"KV cache ({args.kv_precision}): {kv_token:,.0f} bytes/token, "
            f"{per_sequence / GIB:.2f} GiB per {args.context_tokens}-token sequence",
            f"HBM: {args.tp} x {hbm / GIB:.1f} GiB at {args.gpu_memory_utilization:.0%}; "
            f"KV cache budget {budget / GIB:.1f} GiB",
            f"max concurrent sequences at {args.context_tokens} tokens: "
            f"{max_concurrent_sequences(budget, kv_token, args.context_tokens)}",
            f"fewest GPUs that hold the weights: {min_gpus}",
        ]
    )


def _cmd_cost(args: argparse.Namespace) -> str:
    per_million = usd_per_million_tokens(args.gpu_usd_per_hour, args.gpus, args.tokens_per_s)
    needed = break_even_tokens_per_s(args.gpu_usd_per_hour, args.gpus, args.target_usd_per_million)
    monthly = args.gpu_usd_per_hour * args.gpus * HOURS_PER_MONTH
    tokens = self_host_break_even_tokens_per_month(
        args.gpu_usd_per_hour, args.gpus, args.api_usd_per_million
    )
    return "\n".join(
        [
            f"${args.gpu_usd_per_hour:.2f}/h x {args.gpus} GPU(s) at "
            f"{args.tokens_per_s:,.0f} tok/s: ${per_million:.4f} per million tokens",
            f"break-even for ${args.target_usd_per_million:.2f}/M: {needed:,.1f} tok/s",
            f"self-host: ${monthly:,.0f}/month always on; cheaper than an API at "
            f"${args.api_usd_per_million:.2f}/M above {tokens:,.0f} tokens/month "
            f"({tokens / 1e9:.2f} B)",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.ops.planner",
        description="Capacity and cost planner for the cascade's GPU tiers (the seed lesson's "
        "formulas). All numbers are estimates: replace tokens/s with `vllm bench serve` results.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="table for the tiers of a Serve config (or RayService)")
    plan.add_argument("config", type=Path, help="Serve config YAML or KubeRay RayService YAML")
    plan.add_argument(
        "--small-share",
        type=float,
        default=0.7,
        help="fraction of model-served tokens the router sends to small (0.7)",
    )
    plan.add_argument(
        "--escalation-rate",
        type=float,
        default=0.1,
        help="fraction of small-tier answers re-run on large (0.1)",
    )
    plan.add_argument(
        "--target-usd-per-million",
        type=float,
        default=1.0,
        help="target $/M output tokens for break-even tok/s (1.00)",
    )
    plan.add_argument(
        "--api-usd-per-million",
        type=float,
        default=0.90,
        help="API price to compare self-hosting against (0.90)",
    )
    plan.add_argument(
        "--peak-output-tokens-per-s",
        type=float,
        default=None,
        help="peak output tok/s over both tiers: prints replicas and GPUs needed",
    )
    plan.add_argument(
        "--typical-context-tokens",
        type=int,
        default=1024,
        help="prompt + answer tokens of a typical request (1024)",
    )
    plan.add_argument(
        "--overhead-gib",
        type=float,
        default=1.5,
        help="per-GPU HBM for activations, CUDA graphs, NCCL (1.5)",
    )
    plan.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="TIER=ARCH",
        help=f"override a tier's architecture: one of {sorted(MODEL_ARCHS)} or "
        "layers=…,kv_heads=…,head_dim=…,params=…",
    )
    plan.add_argument(
        "--gpu-memory-gib",
        action="append",
        default=[],
        metavar="TIER=GIB",
        help="override a tier's HBM per GPU (e.g. a MIG slice)",
    )
    plan.set_defaults(run=_cmd_plan)

    memory = sub.add_parser("memory", help="weights, KV cache and max sequences for one model")
    memory.add_argument(
        "--arch",
        type=parse_arch,
        required=True,
        help=f"one of {sorted(MODEL_ARCHS)} or layers=…,kv_heads=…,head_dim=…,params=…",
    )
    memory.add_argument("--precision", choices=sorted(BYTES_PER_ELEMENT), default="bf16")
    memory.add_argument("--kv-precision", choices=sorted(BYTES_PER_ELEMENT), default="bf16")
    memory.add_argument("--gpu", default="A100-80G", help=f"one of {sorted(GPU_MEMORY_MIB)}")
    memory.add_argument("--gpu-memory-gib", type=float, default=None, help="overrides --gpu")
    memory.add_argument("--tp", type=int, default=1, help="GPUs per replica (tensor parallel)")
    memory.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    memory.add_argument("--overhead-gib", type=float, default=1.5)
    memory.add_argument("--context-tokens", type=int, default=4096)
    memory.set_defaults(run=_cmd_memory)

    cost = sub.add_parser("cost", help="$/M tokens, break-even tok/s, self-host vs API")
    cost.add_argument("--gpu-usd-per-hour", type=float, required=True)
    cost.add_argument("--gpus", type=int, default=1)
    cost.add_argument("--tokens-per-s", type=float, required=True)
    cost.add_argument("--target-usd-per-million", type=float, default=1.0)
    cost.add_argument("--api-usd-per-million", type=float, default=0.90)
    cost.set_defaults(run=_cmd_cost)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        print(args.run(args))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    main()
