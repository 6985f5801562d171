"""The engine levers report: the printed summary, the JSON file and the PNG plots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import prompt_audit


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"Engine levers on {report['model']} (load avg before/after: "
        f"{report['machine']['load_avg_1_5_15_before'][0]:.2f} / "
        f"{report['machine']['load_avg_1_5_15_after'][0]:.2f} on "
        f"{report['machine']['cpus']} CPUs)"
    ]
    lines += _format_continuous(report.get("continuous_batching"))
    lines += _format_prefix(report.get("prefix_caching"))
    lines += _format_speculative(report.get("speculative_decoding"))
    if audit := report.get("prompt_audit"):
        lines += [
            "",
            prompt_audit.format_audit(audit)
            if "error" not in audit
            else f"Prompt audit: error {audit['error']}",
        ]
    for name, error in report["errors"].items():
        lines.append(f"ERROR in {name}: {error}")
    return "\n".join(lines)


def _format_continuous(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"1. Continuous batching: error {section['error']}"]
    cb, st = section["continuous_vllm"], section["static_transformers"]
    lengths = section["output_length_tokens"]
    return [
        "",
        f"1. Continuous batching: {section['requests']} requests, output "
        f"{lengths['min']}-{lengths['max']} tokens (p50 {lengths['p50']})",
        f"   vLLM continuous     {cb['output_tokens_per_s']:8.1f} output tok/s "
        f"({cb['wall_s']:.1f} s)",
        f"   static HF generate  {st['output_tokens_per_s']:8.1f} output tok/s "
        f"({st['wall_s']:.1f} s, batch {st['batch_size']}, "
        f"{st['padded_slot_fraction']:.0%} of decode slots padding)",
        f"   ratio               {section['throughput_ratio']:8.2f}x",
    ]


def _format_prefix(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"2. Prefix caching: error {section['error']}"]
    lines = [
        "",
        f"2. Prefix caching: {section['on']['requests']} requests sharing a "
        f"{section['system_prompt_tokens']}-token system prompt",
    ]
    for side in ("off", "on"):
        s = section[side]
        lines.append(
            f"   {side:<3} cold TTFT {_fmt(s['cold_request_ttft_s'], '.3f')} s, warm TTFT mean "
            f"{_fmt(s['warm_requests_ttft']['mean_s'], '.3f')} s, "
            f"{s['prompt_tokens_per_s']:.0f} prompt tok/s, {s['output_tokens_per_s']:.1f} "
            f"output tok/s, hit rate {_fmt(s['prefix_cache_hit_rate'], '.1%')}"
        )
    lines.append(
        f"   warm TTFT speed-up {_fmt(section['warm_ttft_speedup'])}x, "
        f"throughput ratio {_fmt(section['throughput_ratio'])}x"
    )
    return lines


def _format_speculative(section: dict | None) -> list[str]:
    if not section:
        return []
    if "error" in section:
        return ["", f"3. Speculative decoding ({section['config']}): error {section['error']}"]
    lines = ["", f"3. Speculative decoding, n-gram ({section['config']})"]
    for name, w in section["workloads"].items():
        lines.append(
            f"   {name:<18} off {w['off']['output_tokens_per_s']:6.1f} tok/s, on "
            f"{w['on']['output_tokens_per_s']:6.1f} tok/s ({w['speedup']:.2f}x), acceptance "
            f"{_fmt(w['acceptance_rate'], '.1%')}, identical outputs "
            f"{w['identical_outputs']}/{w['on']['requests']}"
        )
    return lines


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, bars) for title, bars in _plot_panels(report) if bars]
    written: list[Path] = []
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
        for ax, (title, bars) in zip(axes[0], panels, strict=True):
            labels, values = zip(*bars, strict=True)
            ax.bar(labels, values, color=["tab:grey", "tab:green"] * (len(values) // 2 + 1))
            ax.set_title(title, fontsize=10)
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.suptitle(f"Engine levers on {report['model']}, each off vs on")
        fig.tight_layout()
        path = out.with_name(f"{out.stem}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    audit = report.get("prompt_audit")
    if audit and "error" not in audit:
        written.append(prompt_audit.plot_audit(audit, out.with_name(f"{out.stem}_audit.png")))
    return written


def _plot_panels(report: dict[str, Any]) -> Iterator[tuple[str, list[tuple[str, float]]]]:
    cb = report.get("continuous_batching")
    if cb and "error" not in cb:
        yield (
            f"Continuous batching: output tok/s ({cb['throughput_ratio']:.1f}x)",
            [
                ("static HF", cb["static_transformers"]["output_tokens_per_s"]),
                ("vLLM continuous", cb["continuous_vllm"]["output_tokens_per_s"]),
            ],
        )
    prefix = report.get("prefix_caching")
    if prefix and "error" not in prefix:
        yield (
            "Prefix caching: mean TTFT of warm requests (s)",
            [
                ("cache off", prefix["off"]["warm_requests_ttft"]["mean_s"] or 0.0),
                ("cache on", prefix["on"]["warm_requests_ttft"]["mean_s"] or 0.0),
            ],
        )
    spec = report.get("speculative_decoding")
    if spec and "error" not in spec:
        bars = []
        for name, w in spec["workloads"].items():
            bars += [
                (f"{name} off", w["off"]["output_tokens_per_s"]),
                (f"{name} on", w["on"]["output_tokens_per_s"]),
            ]
        yield ("n-gram speculative decoding: output tok/s", bars)
