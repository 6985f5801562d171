"""The seed lesson's formulas, and the hardware and model facts they read.

- weights = parameters x bytes per parameter (AWQ/GPTQ keep embeddings and lm_head in 16-bit);
- KV-cache bytes per token = 2 (K and V) x layers x kv_heads x head_dim x bytes per element;
- max concurrent sequences = free HBM / (KV bytes per token x context length);
- $/M tokens = GPU $/hour x GPUs / (tokens/s x 3600) x 1e6 (serve_app.accounting.cost_model);
- break-even tokens/s for a target $/M, and self-host vs API break-even tokens per month.

Model facts are a small built-in table (no download); `--arch` overrides them.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

GIB = 1024**3
MIB = 1024**2
KIB = 1024
HOURS_PER_MONTH = 720.0  # the seed lesson's month: 30 days x 24 h

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "fp8": 1,
    "int8": 1,
    "int4": 0.5,
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


def hbm_bytes(accelerator: str | None, override_gib: float | None) -> float:
    """HBM of one GPU: `override_gib`, else the table's figure for `accelerator`."""
    if override_gib is not None:
        return override_gib * GIB
    if accelerator in GPU_MEMORY_MIB:
        return GPU_MEMORY_MIB[accelerator] * MIB
    raise ValueError(
        f"unknown HBM size for accelerator {accelerator!r}; known: {sorted(GPU_MEMORY_MIB)}. "
        "Pass --gpu-memory-gib TIER=GiB."
    )
