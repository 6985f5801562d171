"""The `plan` subcommand's text: a table per tier, blended prices, break-evens, advice."""

from __future__ import annotations

from serve_app.accounting.cost_model import break_even_tokens_per_s
from serve_app.config import TierName
from serve_app.ops.planner.formulas import (
    GIB,
    HOURS_PER_MONTH,
    KIB,
    blended_usd_per_million,
    replicas_for_load,
    self_host_break_even_tokens_per_month,
)
from serve_app.ops.planner.plan import TierPlan, right_sizing_advice


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
