"""The planner's command line: `plan`, `memory` and `cost` (run as `python -m
serve_app.ops.planner`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve_app.accounting.cost_model import break_even_tokens_per_s, usd_per_million_tokens
from serve_app.ops.planner.formulas import (
    BYTES_PER_ELEMENT,
    GIB,
    GPU_MEMORY_MIB,
    HOURS_PER_MONTH,
    MODEL_ARCHS,
    ModelArch,
    hbm_bytes,
    kv_budget_bytes,
    kv_bytes_per_token,
    max_concurrent_sequences,
    min_gpus_for_weights,
    self_host_break_even_tokens_per_month,
    weights_bytes,
)
from serve_app.ops.planner.plan import load_cascade_config, plan_tier
from serve_app.ops.planner.report import plan_report


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
    hbm = hbm_bytes(args.gpu, args.gpu_memory_gib)
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
