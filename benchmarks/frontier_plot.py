"""The frontier benchmark's figure: one panel per source, quality against $/M tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_frontier(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = dict(report["sources"])
    if "pooled" in report:
        entries["all (pooled)"] = report["pooled"]
    sources = list(entries)
    cols = min(3, max(1, len(sources)))
    rows = math.ceil(len(sources) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(sources) :]:
        ax.axis("off")
    for ax, source in zip(axes.flat, sources, strict=False):
        entry = entries[source]
        h = entry["headline"]
        small, large = h["all_small"], h["all_large"]
        for name, style in (("router", "-"), ("heuristic", "-")):
            points = entry["curves"][name]
            ax.plot(
                [p["usd_per_m_tokens"] for p in points],
                [p["quality"] for p in points],
                style,
                drawstyle="default",
                label=f"{name} (every threshold)",
                lw=1.6 if name == "router" else 1.0,
                alpha=0.9,
            )
        ax.plot(
            [small["usd_per_m_tokens"], large["usd_per_m_tokens"]],
            [small["quality"], large["quality"]],
            "--",
            color="grey",
            label="random (expected)",
        )
        ax.plot(
            small["usd_per_m_tokens"], small["quality"], "s", color="tab:green", label="all-small"
        )
        ax.plot(
            large["usd_per_m_tokens"], large["quality"], "s", color="tab:red", label="all-large"
        )
        ax.axhline(
            0.95 * large["quality"], color="tab:red", lw=0.7, ls=":", label="95% of all-large"
        )
        shipped = h["shipped"]
        ax.plot(
            shipped["usd_per_m_tokens"],
            shipped["quality"],
            "*",
            ms=15,
            color="black",
            label=f"shipped (t={shipped['threshold']:.3f})",
        )
        ax.set_title(f"{source} ({entry['prompts']} held-out prompts)")
        ax.set_xlabel("$ per million tokens (production prices)")
        ax.set_ylabel("quality (mean score)")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    tokens = report["token_estimate"]
    fig.suptitle(
        "Quality vs cost on the router's held-out test split; prompt tokens "
        f"{tokens['prompt_tokens']}, answer {tokens['answer_tokens']} tokens; no quality gate",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
