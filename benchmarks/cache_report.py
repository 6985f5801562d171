"""The cache benchmark's report: printed tables, PNG plots and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache_latency import STORE_NAMES
from benchmarks.cache_pairs import PAIR_KINDS


def format_report(report: dict[str, Any]) -> str:
    sections = [_format_machine(report)]
    if report["store_latency"]:
        sections.append(_format_latency(report["store_latency"]))
    if report["pairs"] is not None:
        sections.append(_format_pairs(report["pairs"], report["configured_default"]))
    sections.append(_format_ingress(report["ingress"]))
    return "\n\n".join(sections)


def _format_machine(report: dict[str, Any]) -> str:
    machine = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in machine["loadavg_at_start"])
    return f"Machine: {machine['cpus']} CPUs, load average at start {load}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _format_latency(rows: Sequence[dict[str, Any]]) -> str:
    table = _table(
        [
            "store",
            "entries",
            "queries",
            "search p50 ms",
            "search p99 ms",
            "hit frac",
            "exact p50 ms",
            "exact p99 ms",
            "upserts/s",
        ],
        [
            [
                r["store"],
                r["entries"],
                r["queries"],
                r["search_p50_ms"],
                r["search_p99_ms"],
                r["search_hit_fraction"],
                r["exact_p50_ms"],
                r["exact_p99_ms"],
                r["upserts_per_s"],
            ]
            for r in rows
        ],
    )
    partitions, dim = rows[0]["partitions"], rows[0]["dim"]
    return (
        f"(a) Store lookup latency, embedding excluded: {dim}-d random unit vectors over "
        f"{partitions} partitions, top-1 filtered by partition; half the queries near-duplicates "
        "(hits), half random (misses).\n    qdrant-local (qdrant-client local mode) scans every "
        "point in Python, so it times fewer queries at large sizes (see 'queries').\n" + table
    )


def _format_pairs(pairs: dict[str, Any], default: dict[str, Any]) -> str:
    sweep = pairs["sweep"]
    rows = []
    for off, on in zip(
        [p for p in sweep if not p["verify_candidates"]],
        [p for p in sweep if p["verify_candidates"]],
        strict=True,
    ):
        rows.append(
            [
                f"{on['threshold']:.2f}",
                _rate(off, "hits", "positives"),
                _rate(off, "near_miss_false_hits", "near_miss_negatives"),
                _rate(off, "false_hits", "negatives"),
                _rate(on, "hits", "positives"),
                _rate(on, "near_miss_false_hits", "near_miss_negatives"),
                _rate(on, "false_hits", "negatives"),
            ]
        )
    sweep_table = _table(
        [
            "threshold",
            "hit (no guard)",
            "near-miss FH",
            "all FH",
            "hit (guard)",
            "near-miss FH",
            "all FH",
        ],
        rows,
    )
    recommended = pairs["recommended"]
    lines = [
        f"(b) Pairs: {pairs['evaluated']} of {pairs['in_file']} in {pairs['path']}; embedding "
        f"p50 {pairs['embedding_p50_ms']:.1f} ms, p99 {pairs['embedding_p99_ms']:.1f} ms. "
        "FH = false hits (should not hit, did).",
        sweep_table,
        "",
        _format_by_kind(pairs, recommended["threshold"]),
        "",
        f"Configured default: threshold {default['similarity_threshold']:.2f}, "
        f"verify_candidates={default['verify_candidates']}.",
        f"Recommended threshold: {recommended['reason']}.",
        f"Without the guard: {pairs['recommended_without_guard']['reason']}.",
    ]
    details = pairs["at_recommended"]
    if details is not None:
        at = f"{details['threshold']:.2f} with the guard"
        lines.append(_format_pair_list(f"False hits at {at}", details["false_hits"]))
        lines.append(_format_pair_list(f"Should-hit pairs that miss at {at}", details["missed"]))
    return "\n".join(lines)


def _rate(point: dict[str, Any], part: str, whole: str) -> str:
    if not point[whole]:
        return "-"
    return f"{point[part]}/{point[whole]} ({point[part] / point[whole]:.0%})"


def _format_by_kind(pairs: dict[str, Any], threshold: float | None) -> str:
    if threshold is None:
        return "No recommended threshold: no per-kind table."
    cosines: dict[tuple[str, bool], list[float]] = {}
    for pair in pairs["pairs"]:
        cosines.setdefault((pair["kind"], pair["should_hit"]), []).append(pair["cosine"])
    points = {p["verify_candidates"]: p for p in pairs["sweep"] if p["threshold"] == threshold}
    rows = []
    for kind in PAIR_KINDS:
        for should_hit in (True, False):
            values = cosines.get((kind, should_hit))
            if not values:
                continue
            counts_off = points[False]["by_kind"][kind]
            counts_on = points[True]["by_kind"][kind]
            field_name = "hits" if should_hit else "false_hits"
            whole = "positives" if should_hit else "negatives"
            rows.append(
                [
                    kind,
                    "hit" if should_hit else "no hit",
                    len(values),
                    f"{min(values):.3f}",
                    f"{float(np.median(values)):.3f}",
                    f"{max(values):.3f}",
                    f"{counts_off[field_name]}/{counts_off[whole]}",
                    f"{counts_on[field_name]}/{counts_on[whole]}",
                ]
            )
    table = _table(
        ["kind", "label", "pairs", "cos min", "cos p50", "cos max", "no guard", "guard"], rows
    )
    return f"Per kind at {threshold:.2f} (hits; false hits on 'no hit' rows):\n{table}"


def _format_pair_list(title: str, pairs: Sequence[dict[str, Any]]) -> str:
    if not pairs:
        return f"{title}: none."
    lines = [f"{title} ({len(pairs)}):"]
    for p in pairs:
        guard = f", guard: {p['guard_reason']}" if p["guard_reason"] else ""
        tag = f"[{p['kind']}, cos {p['cosine']:.3f}{guard}]"
        lines.append(f"  {tag} {p['stored']!r} -> {p['asked']!r}")
    return "\n".join(lines)


def _format_ingress(ingress: dict[str, Any]) -> str:
    if "skipped" in ingress:
        return f"(c) End-to-end through the ingress: skipped ({ingress['skipped']})."
    table = _table(
        ["call", "p50 ms", "p99 ms", "x-cascade-cache"],
        [
            [
                "first (miss)",
                ingress["miss_p50_ms"],
                ingress["miss_p99_ms"],
                ingress["first_call_cache"],
            ],
            [
                "repeat (hit)",
                ingress["hit_p50_ms"],
                ingress["hit_p99_ms"],
                ingress["repeat_call_cache"],
            ],
        ],
    )
    return (
        f"(c) End-to-end through {ingress['url']}: {ingress['repetitions']} unique questions, "
        "each asked twice (latency over calls whose header matched).\n" + table
    )


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Threshold sweep and store latency as PNGs beside the JSON report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if report["pairs"] is not None:
        path = out.with_name(f"{out.stem}_thresholds.png")
        _plot_sweep(plt, report["pairs"], report["configured_default"], path)
        written.append(path)
    if report["store_latency"]:
        path = out.with_name(f"{out.stem}_latency.png")
        _plot_latency(plt, report["store_latency"], path)
        written.append(path)
    return written


def _plot_sweep(plt: Any, pairs: dict[str, Any], default: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 5.5))
    series = [
        ("hit rate (should hit)", "hit_rate", "tab:green"),
        ("false-hit rate, near-miss kinds", "near_miss_false_hit_rate", "tab:red"),
        ("false-hit rate, all should-not-hit", "false_hit_rate", "tab:orange"),
    ]
    for verify, style in ((False, "--"), (True, "-")):
        points = [p for p in pairs["sweep"] if p["verify_candidates"] == verify]
        thresholds = [p["threshold"] for p in points]
        for label, key, color in series:
            guard = "guard on" if verify else "guard off"
            values = [p[key] or 0.0 for p in points]
            ax.plot(thresholds, values, style, color=color, marker=".", label=f"{label} ({guard})")
    recommended = pairs["recommended"]["threshold"]
    if recommended is not None:
        label = f"recommended {recommended:.2f}"
        ax.axvline(recommended, color="black", linestyle=":", label=label)
    ax.axvline(
        default["similarity_threshold"],
        color="grey",
        linestyle="-.",
        alpha=0.6,
        label=f"configured default {default['similarity_threshold']:.2f}",
    )
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylabel("fraction of pairs")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Semantic cache on {pairs['evaluated']} labelled pairs (all-MiniLM-L6-v2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_latency(plt: Any, rows: Sequence[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(STORE_NAMES, ("tab:blue", "tab:purple"), strict=True):
        mine = [r for r in rows if r["store"] == name]
        sizes = [r["entries"] for r in mine]
        ax.plot(sizes, [r["search_p50_ms"] for r in mine], "-o", color=color, label=f"{name} p50")
        ax.plot(sizes, [r["search_p99_ms"] for r in mine], "--x", color=color, label=f"{name} p99")
    ax.axhline(2.0, color="grey", linestyle=":", label="target p50 2 ms (Edge, 100k)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries in the store")
    ax.set_ylabel("semantic search latency (ms)")
    ax.set_title("Filtered top-1 search, embedding excluded")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
