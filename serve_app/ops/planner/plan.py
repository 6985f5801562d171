"""A plan per tier of a Serve config: what its engine arguments and hardware imply (weights,
KV cache, sequences, $/M), and plain-language right-sizing advice."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from serve_app.accounting.cost_model import break_even_tokens_per_s, usd_per_million_tokens
from serve_app.config import CascadeConfig, TierConfig, TierName
from serve_app.ops.planner.formulas import (
    BYTES_PER_ELEMENT,
    GIB,
    GPU_MEMORY_MIB,
    MIB,
    MIG_CAPABLE,
    MODEL_ARCHS,
    ModelArch,
    hbm_bytes,
    kv_budget_bytes,
    kv_bytes_per_token,
    max_concurrent_sequences,
    weights_bytes,
)

BUILDER_IMPORT_PATH = "serve_app.builder:build_app"

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
        hbm_bytes_per_gpu=hbm_bytes(accelerator, hbm_gib),
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
