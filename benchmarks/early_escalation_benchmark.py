"""Early escalation, old against new: end-to-end latency and cost of escalated requests.

The same labelled prompts (asked to reason first, so answers run long enough for stopping early
to matter) are sent as routed, judged requests to a stack with `quality.early_escalation` off
(old: the small tier's answer is finished, then checked) and one with it on (new: stopped once
its running confidence shows it will fail). No per-request switch exists, so the comparison
runs two configs, written by `config_variant` from the same base config: the same confidence
threshold in both, and a router that sends every request to the small tier (only routed
small-tier answers are judged, and this measures those). One run per config
(`run_early`, saved as `early_<label>.json`), then `compare_runs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.answer_grading import grade_answer, question_messages
from benchmarks.labelled_questions import ask_gateway

QUALITY_HEADER = "x-cascade-quality"


def config_variant(
    base: dict[str, Any],
    *,
    early: bool,
    min_mean_logprob: float | None,
    route_all_small: bool = True,
) -> dict[str, Any]:
    """A copy of a Serve config (parsed YAML) for one side of the comparison, validated.

    `min_mean_logprob`: the confidence threshold both sides judge with (None: the base's).
    """
    from serve_app.config import CascadeConfig

    config = json.loads(json.dumps(base))  # deep copy of plain YAML data
    for application in config["applications"]:
        if application.get("import_path") != "serve_app.builder:build_app":
            continue
        args = application.setdefault("args", {})
        if args.get("ingress", {}).get("share_deployments_of"):
            continue
        quality = args.setdefault("quality", {})
        if min_mean_logprob is not None:
            quality["min_mean_logprob"] = min_mean_logprob
        quality.setdefault("early_escalation", {})["enabled"] = early
        if route_all_small:
            # Score >= 1.0 never happens: every routed request goes to the small tier.
            args.setdefault("router", {})["threshold"] = 1.0
        CascadeConfig.model_validate(args)
    return config


def write_config_variants(
    base_path: Path, out_dir: Path, min_mean_logprob: float | None, route_all_small: bool
) -> dict[str, Path]:
    base = yaml.safe_load(base_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for label, early in (("off", False), ("on", True)):
        variant = config_variant(
            base, early=early, min_mean_logprob=min_mean_logprob, route_all_small=route_all_small
        )
        path = out_dir / f"cascade_early_{label}.yaml"
        path.write_text(
            f"# {base_path} with quality.early_escalation.enabled: {str(early).lower()}, "
            "written by `python -m benchmarks.confidence_calibration --part config`.\n"
            + yaml.safe_dump(variant, sort_keys=False)
        )
        paths[label] = path
    return paths


def run_early(
    questions: list[dict[str, Any]],
    *,
    url: str,
    model: str,
    max_tokens: int,
    concurrency: int,
    headers: dict[str, str],
) -> list[dict[str, Any]]:
    """Ask each question once as a routed, judged, uncached request; one row per request."""
    requests = []
    for row in questions:
        body = {
            "model": model,
            "messages": question_messages(row, "reasoned"),
            "max_tokens": max_tokens,
            "temperature": 0,
            "cache": False,
        }
        requests.append(("/v1/chat/completions", body, {**headers, QUALITY_HEADER: "hold"}))
    results = ask_gateway(url, requests, concurrency=concurrency, desc="early escalation")
    rows = []
    for row, result in zip(questions, results, strict=True):
        got = result["headers"]
        text = ""
        if result["json"] and result["status"] == 200:
            text = result["json"]["choices"][0]["message"].get("content") or ""
        rows.append(
            {
                "id": row["id"],
                "source": row["source"],
                "status": result["status"],
                "error": result["error"],
                "e2e_s": result["latency_s"],
                "route": got.get("x-cascade-route"),
                "tier": got.get("x-cascade-tier"),
                "escalated": got.get("x-cascade-escalated") == "true",
                "reason": got.get("x-cascade-escalation-reason"),
                "cost_usd": float(got.get("x-cascade-cost-usd") or "nan"),
                "correct": grade_answer(row, text).correct if text else False,
            }
        )
    return rows


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None}
    return {
        "n": len(values),
        "mean": float(np.mean(values)),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
    }


def summarise_run(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [row for row in rows if row["status"] == 200]
    escalated = [row for row in answered if row["escalated"]]
    reasons: dict[str, int] = {}
    for row in escalated:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    return {
        "requests": len(rows),
        "answered": len(answered),
        "routed_small": sum(row["route"] == "small" for row in answered),
        "escalated": len(escalated),
        "reasons": reasons,
        "accuracy": float(np.mean([row["correct"] for row in answered])) if answered else None,
        "e2e_s_escalated": _stats([row["e2e_s"] for row in escalated]),
        "cost_usd_escalated": _stats([row["cost_usd"] for row in escalated]),
        "e2e_s_all": _stats([row["e2e_s"] for row in answered]),
        "cost_usd_all": _stats([row["cost_usd"] for row in answered]),
    }


def compare_runs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run's summary, and the requests escalated in both runs compared pair by pair."""
    old_by_id = {row["id"]: row for row in old if row["status"] == 200}
    both = [
        (old_by_id[row["id"]], row)
        for row in new
        if row["status"] == 200
        and row["escalated"]
        and old_by_id.get(row["id"], {}).get("escalated")
    ]
    paired = {
        "requests": len(both),
        "e2e_s_old": _stats([o["e2e_s"] for o, _ in both]),
        "e2e_s_new": _stats([n["e2e_s"] for _, n in both]),
        "e2e_s_saved_median": float(np.median([o["e2e_s"] - n["e2e_s"] for o, n in both]))
        if both
        else None,
        "cost_usd_old_mean": float(np.mean([o["cost_usd"] for o, _ in both])) if both else None,
        "cost_usd_new_mean": float(np.mean([n["cost_usd"] for _, n in both])) if both else None,
    }
    new_by_id = {row["id"]: row for row in new if row["status"] == 200}
    escalated_only_new = sum(
        1
        for i, row in new_by_id.items()
        if row["escalated"] and not old_by_id.get(i, {}).get("escalated")
    )
    escalated_only_old = sum(
        1
        for i, row in old_by_id.items()
        if row["escalated"] and not new_by_id.get(i, {}).get("escalated")
    )
    return {
        "old": summarise_run(old),
        "new": summarise_run(new),
        "escalated_in_both": paired,
        "escalated_only_new": escalated_only_new,
        "escalated_only_old": escalated_only_old,
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}{unit}"

    lines = [f"{'':28}{'old (off)':>14}{'new (on)':>14}"]
    old, new = comparison["old"], comparison["new"]
    lines.append(f"{'requests answered':28}{old['answered']:>14}{new['answered']:>14}")
    lines.append(f"{'escalated':28}{old['escalated']:>14}{new['escalated']:>14}")
    lines.append(f"{'accuracy':28}{fmt(old['accuracy']):>14}{fmt(new['accuracy']):>14}")
    for key, label, stat, digits in (
        ("e2e_s_escalated", "e2e escalated p50 (s)", "p50", 2),
        ("cost_usd_escalated", "cost escalated mean ($)", "mean", 8),
    ):
        before, after = fmt(old[key][stat], "", digits), fmt(new[key][stat], "", digits)
        lines.append(f"{label:28}{before:>14}{after:>14}")
    paired = comparison["escalated_in_both"]
    e2e = f"{fmt(paired['e2e_s_old']['p50'])} s -> {fmt(paired['e2e_s_new']['p50'])} s"
    cost = f"{fmt(paired['cost_usd_old_mean'], '', 8)} -> {fmt(paired['cost_usd_new_mean'], '', 8)}"
    lines.append(
        f"escalated in both runs: {paired['requests']}; e2e p50 {e2e}, cost mean {cost} $; "
        f"escalated only with early escalation on: {comparison['escalated_only_new']}, "
        f"only with it off: {comparison['escalated_only_old']}"
    )
    reasons = f"reasons old {old['reasons']}, new {new['reasons']}"
    return "\n".join([*lines, reasons])
