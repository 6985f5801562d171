"""Gateway overhead and capacity, ours against LiteLLM's proxy (issue 18, part 1), in one run.

Both gateways sit in front of the same fake backend (benchmarks/gateway_fake_backend.py:
canned tokens, first after 20 ms, then one every 10 ms), as LiteLLM and TensorZero publish
their gateway figures: what a client sees beyond the backend's own pace is the gateway's.

- **backend alone**: the fake's HTTP server, asked directly: the baseline at every load.
- **LiteLLM**: its proxy (`litellm --num_workers 1`, pinned version from `make litellm-venv`)
  forwarding to that server.
- **ours, pinned**: the cascade of configs/local.yaml with the fake as both tiers, asked for
  `cascade-small` with `"cache": false` (no cache lookup, no routing).
- **ours, routed**: the same stack as shipped, `model: cascade`: a cache lookup (every question
  is new, so every lookup misses and the answer is stored), the router's classifier, the
  quality gate on small-tier answers.

Each gateway, every process of it, runs on the gateway core (`taskset -c 0`; for ours the Ray
head is started under it, so every Serve actor inherits it); the backend (the fake server, and
the fake tier replicas, which move themselves) and this load generator run on the other core.
At each offered load (open loop, fixed intervals, unique questions; streamed and not) each
target is measured in turn, the backend first: added latency is the gateway's p50/p99 minus the
backend's at that load. The sweep steps a gateway up until its p99 added passes the limit
(50 ms) or a request fails; its highest load before that is its sustained capacity. CPU seconds
per 1,000 requests: the gateway core's busy time over the run (/proc/stat), and the gateway's
processes' own (psutil).

    python -m benchmarks.gateway_comparison               # the full sweep (~20 minutes)
    python -m benchmarks.gateway_comparison --quick       # CI: 10 and 25 rps, 2 s each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.gateway_fake_backend import Pace, canned_text, pin_process_to
from benchmarks.gateway_load import Target, open_loop, summarize
from benchmarks.gateway_stacks import (
    LITELLM_MASTER_KEY,
    LITELLM_MODEL,
    CpuMeter,
    Stacks,
    core_busy_s,
)
from devtools import local_stack

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "artifacts" / "gateway_comparison.json"
DOC_FIGURE = REPO_ROOT / "docs" / "img" / "gateway_comparison.png"
GATEWAYS = ("litellm", "ours_pinned", "ours_routed")
SETTLE_WINDOW_S = 0.5
LABELS = {
    "backend": "backend alone",
    "litellm": "LiteLLM proxy",
    "ours_pinned": "ours, pinned, cache bypassed",
    "ours_routed": "ours, cache + router on",
}


@dataclass(frozen=True)
class ComparisonOptions:
    """What one run measures; `quick()` is the CI configuration."""

    loads_rps: tuple[float, ...] = (10, 20, 30, 40, 50, 75, 100)
    """Offered loads, ascending; a gateway goes up them until it no longer sustains one."""
    table_loads_rps: tuple[float, ...] = (10, 50, 100)
    """Loads every gateway is measured at (and tabled at), sustained or not."""
    duration_s: float = 10.0
    streams: tuple[bool, ...] = (False, True)
    max_tokens: int = 8
    added_p99_limit_ms: float = 50.0
    warmup_requests: int = 30
    pace: Pace = field(default_factory=Pace)
    settled_core_share: float = 0.35
    """After each run, wait until the gateway core is busier than this share of the time no more
    (at most `settle_max_s`)."""
    settle_max_s: float = 30.0
    gateway_cpus: tuple[int, ...] = (0,)
    backend_cpus: tuple[int, ...] = (1,)
    out: Path = DEFAULT_OUT
    figure: Path | None = None

    @classmethod
    def quick(cls, **overrides: Any) -> ComparisonOptions:
        quick = cls(loads_rps=(10, 25), table_loads_rps=(10,), duration_s=2.0, warmup_requests=5)
        return replace(quick, **overrides)


def targets(stacks: Stacks) -> dict[str, Target]:
    ours = stacks.url("ours")
    return {
        "backend": Target("backend", stacks.url("backend"), "fake"),
        "litellm": Target(
            "litellm", stacks.url("litellm"), LITELLM_MODEL, api_key=LITELLM_MASTER_KEY
        ),
        "ours_pinned": Target("ours_pinned", ours, "cascade-small", {"cache": False}),
        "ours_routed": Target("ours_routed", ours, "cascade"),
    }


# ---- one run, one point --------------------------------------------------------------------


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def point_figures(
    gateway: dict[str, Any], backend: dict[str, Any], cpu: dict[str, Any], limit_ms: float
) -> dict[str, Any]:
    """A gateway's figures at one load, against the backend alone at the same load."""
    added = {q: _minus(gateway["latency_ms"][q], backend["latency_ms"][q]) for q in ("p50", "p99")}
    errors = gateway["requests"] - gateway["ok"]
    per_1k = 1000 / gateway["requests"]
    return {
        "added_p50_ms": added["p50"],
        "added_p99_ms": added["p99"],
        "ttft_p50_ms": gateway["ttft_ms"]["p50"],
        "ttft_p99_ms": gateway["ttft_ms"]["p99"],
        "added_ttft_p50_ms": _minus(gateway["ttft_ms"]["p50"], backend["ttft_ms"]["p50"]),
        "errors": errors,
        "achieved_rps": gateway["achieved_rps"],
        "self_reported_p50_ms": gateway["self_reported_ms"]["p50"],
        "self_reported_p99_ms": gateway["self_reported_ms"]["p99"],
        "cpu_s_per_1k_core": cpu["core_busy_s"] * per_1k,
        "cpu_s_per_1k_processes": cpu["processes_s"] * per_1k,
        "cpu_s_by_process": cpu["by_process_s"],
        "sustained": errors == 0 and added["p99"] is not None and added["p99"] < limit_ms,
    }


async def measure(
    target: Target, rate: float, stream: bool, options: ComparisonOptions
) -> tuple[dict[str, Any], float]:
    samples, duration_s = await open_loop(
        target,
        rate=rate,
        duration_s=options.duration_s,
        stream=stream,
        max_tokens=options.max_tokens,
    )
    return summarize(samples, duration_s), duration_s


async def warm_up(all_targets: dict[str, Target], options: ComparisonOptions) -> None:
    """First requests pay for connections, compiled paths and the router's first batch."""
    for target in all_targets.values():
        for stream in options.streams:
            await open_loop(
                target,
                rate=10,
                duration_s=options.warmup_requests / 10,
                stream=stream,
                max_tokens=options.max_tokens,
            )


async def settle(core: int, options: ComparisonOptions) -> None:
    """Wait until the gateway core is quiet again: an overloaded run leaves requests the client
    gave up on still in the gateway, and the next run must not meet them."""
    deadline = time.monotonic() + options.settle_max_s
    while time.monotonic() < deadline:
        before = core_busy_s(core)
        await asyncio.sleep(SETTLE_WINDOW_S)
        if (core_busy_s(core) - before) / SETTLE_WINDOW_S < options.settled_core_share:
            return


async def idle_cpu(stacks: Stacks, options: ComparisonOptions) -> dict[str, dict[str, float]]:
    """Each gateway's CPU use with no request in flight, in cores (CPU seconds per second):
    the background work the per-request figures at a low load also carry."""
    idle = {}
    for gateway in ("litellm", "ours_pinned"):  # both of ours are one stack
        meter = CpuMeter(options.gateway_cpus[0], stacks.gateway_pids(gateway))
        meter.start()
        await asyncio.sleep(options.duration_s)
        used = meter.stop()
        idle["litellm" if gateway == "litellm" else "ours"] = {
            "core_busy_cores": used["core_busy_s"] / options.duration_s,
            "processes_cores": used["processes_s"] / options.duration_s,
        }
    return idle


async def sweep(
    stacks: Stacks, options: ComparisonOptions
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every (stream mode, load): the backend alone, then each gateway still in the sweep."""
    all_targets = targets(stacks)
    await warm_up(all_targets, options)
    idle = await idle_cpu(stacks, options)
    points: list[dict[str, Any]] = []
    for stream in options.streams:
        going = set(GATEWAYS)
        for rate in options.loads_rps:
            active = [g for g in GATEWAYS if g in going or rate in options.table_loads_rps]
            if not active:
                continue
            backend, _ = await measure(all_targets["backend"], rate, stream, options)
            points.append(_point("backend", rate, stream, backend, None))
            for gateway in active:
                meter = CpuMeter(options.gateway_cpus[0], stacks.gateway_pids(gateway))
                meter.start()
                summary, _ = await measure(all_targets[gateway], rate, stream, options)
                figures = point_figures(summary, backend, meter.stop(), options.added_p99_limit_ms)
                points.append(_point(gateway, rate, stream, summary, figures))
                if not figures["sustained"]:
                    going.discard(gateway)
                _progress(points[-1])
                await settle(options.gateway_cpus[0], options)
    return points, idle


def _point(
    name: str, rate: float, stream: bool, summary: dict[str, Any], figures: dict[str, Any] | None
) -> dict[str, Any]:
    return {"target": name, "offered_rps": rate, "stream": stream, "summary": summary,
            "figures": figures}  # fmt: skip


def _mode(stream: bool) -> str:
    return "streamed" if stream else "whole"


def _progress(point: dict[str, Any]) -> None:
    figures = point["figures"]
    p99 = figures["added_p99_ms"]
    print(
        f"  {_mode(point['stream']):<8} {point['offered_rps']:>5g} rps  "
        f"{LABELS[point['target']]:<30} added p99 "
        f"{'-' if p99 is None else f'{p99:7.1f}'} ms, {figures['errors']} errors, "
        f"{figures['cpu_s_per_1k_core']:.2f} CPU s/1k"
        f"{'' if figures['sustained'] else '  (not sustained)'}",
        flush=True,
    )


# ---- the report ----------------------------------------------------------------------------


def sustained_rps(points: list[dict[str, Any]], gateway: str, stream: bool) -> float:
    """The highest load sustained with every lower load sustained too (0: not even the first)."""
    best = 0.0
    for point in sorted(points, key=lambda p: p["offered_rps"]):
        if point["target"] != gateway or point["stream"] != stream:
            continue
        if not point["figures"]["sustained"]:
            break
        best = point["offered_rps"]
    return best


TABLE_FIGURES = (
    ("added_p50_ms", "added p50 ms"),
    ("added_p99_ms", "added p99 ms"),
    ("ttft_p50_ms", "TTFT p50 ms"),
    ("ttft_p99_ms", "TTFT p99 ms"),
    ("errors", "errors"),
    ("cpu_s_per_1k_core", "CPU s / 1k req, core 0"),
    ("cpu_s_per_1k_processes", "CPU s / 1k req, own procs"),
)


def table_rows(points: list[dict[str, Any]], options: ComparisonOptions) -> list[dict[str, Any]]:
    """One row per figure (at each table load, streamed and not), each gateway's value."""
    index = {(p["target"], p["offered_rps"], p["stream"]): p for p in points}
    rows = []
    for stream in options.streams:
        mode = _mode(stream)
        for rate in options.table_loads_rps:
            for key, label in TABLE_FIGURES:
                values = {
                    g: index[(g, rate, stream)]["figures"][key]
                    for g in GATEWAYS
                    if (g, rate, stream) in index
                }
                rows.append({"figure": f"{label} @{rate:g} rps {mode}", "values": values})
        values = {g: sustained_rps(points, g, stream) for g in GATEWAYS}
        label = f"max rps, p99 added < {options.added_p99_limit_ms:g} ms, {mode}"
        rows.append({"figure": label, "values": values, "higher_is_better": True})
    return rows


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs <= 0 or ours < 0:
        return None
    return ours / theirs


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = (
        f"{'figure':<42} {'LiteLLM':>9} {'ours pin':>9} {'ours on':>9} "
        f"{'pin/Lite':>9} {'on/Lite':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        values = row["values"]
        lite = values.get("litellm")
        lines.append(
            f"{row['figure']:<42} {cell(lite):>9} {cell(values.get('ours_pinned')):>9} "
            f"{cell(values.get('ours_routed')):>9} "
            f"{cell(_ratio(values.get('ours_pinned'), lite)):>9} "
            f"{cell(_ratio(values.get('ours_routed'), lite)):>9}"
        )
    return "\n".join(lines)


def answers_check(points: list[dict[str, Any]], options: ComparisonOptions) -> dict[str, Any]:
    """Whether every gateway returned the backend's exact canned text, and ours' cache use."""
    expected = canned_text(min(options.max_tokens, options.pace.max_tokens))
    texts = {g: sorted({t for p in points if p["target"] == g for t in p["summary"]["texts"]})
             for g in ("backend", *GATEWAYS)}  # fmt: skip
    cache: dict[str, int] = {}
    for point in points:
        if point["target"] == "ours_routed":
            for outcome, count in point["summary"]["cache"].items():
                cache[outcome] = cache.get(outcome, 0) + count
    hits = cache.get("hit", 0)
    return {
        "expected_text": expected,
        "texts": texts,
        "exact": {name: found == [expected] for name, found in texts.items()},
        "ours_routed_cache": cache,
        "ours_routed_hit_rate": hits / sum(cache.values()) if cache else None,
    }


def plot(points: list[dict[str, Any]], options: ComparisonOptions, path: Path) -> None:
    """Added p99 against offered load, one panel per stream mode, one line per gateway."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(options.streams), figsize=(6 * len(options.streams), 4))
    axes = axes if len(options.streams) > 1 else [axes]
    for ax, stream in zip(axes, options.streams, strict=True):
        for gateway in GATEWAYS:
            mine = sorted(
                (p for p in points if p["target"] == gateway and p["stream"] == stream),
                key=lambda p: p["offered_rps"],
            )
            xs = [p["offered_rps"] for p in mine]
            ys = [p["figures"]["added_p99_ms"] for p in mine]
            ax.plot(xs, ys, marker="o", label=LABELS[gateway])
        ax.axhline(options.added_p99_limit_ms, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("added latency p99 (ms)")
        ax.set_title("streamed" if stream else "not streamed")
        ax.legend(fontsize=8)
    fig.suptitle("Gateway overhead over a fake backend, each gateway on one core")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }


# ---- the run -------------------------------------------------------------------------------


def run(options: ComparisonOptions) -> dict[str, Any]:
    # The load generator shares the backend's core; every gateway process gets the other.
    pin_process_to(options.backend_cpus)
    # `kill` stops every process of the run, as Ctrl-C does.
    signal.signal(signal.SIGTERM, local_stack.interrupt)
    before = machine()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as log_dir:
        stacks = Stacks(options.gateway_cpus, options.backend_cpus, options.pace, Path(log_dir))
        try:
            print("starting the fake backend, LiteLLM and our cascade ...", flush=True)
            stacks.start_backend()
            stacks.start_litellm()
            stacks.start_ours()
            print(f"all up after {time.time() - started:.0f} s; sweeping", flush=True)
            points, idle = asyncio.run(sweep(stacks, options))
        except BaseException:
            for name in ("litellm.log", "serve_run.log"):
                log = Path(log_dir) / name
                if log.exists():
                    print(f"--- {name}\n{log.read_text(errors='replace')[-5000:]}", file=sys.stderr)
            raise
        finally:
            stacks.stop()
    rows = table_rows(points, options)
    return {
        "options": {**asdict(options), "out": str(options.out), "figure": str(options.figure)},
        "machine_before": before,
        "machine_after": machine(),
        "duration_s": time.time() - started,
        "table": rows,
        "idle_cpu": idle,
        "sustained_rps": {
            g: {_mode(s): sustained_rps(points, g, s) for s in options.streams} for g in GATEWAYS
        },
        "answers": answers_check(points, options),
        "points": points,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_comparison",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Needs `make litellm-venv` (LiteLLM's proxy in .venv-litellm) and 2 cores.",
    )
    parser.add_argument("--quick", action="store_true", help="CI: 10 and 25 rps, 2 s each")
    parser.add_argument(
        "--loads", type=float, nargs="+", help="offered loads, requests/s, ascending"
    )
    parser.add_argument("--duration-s", type=float, help="seconds at each load")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (+ .png)")
    parser.add_argument("--figure", type=Path, help=f"also write the PNG here (e.g. {DOC_FIGURE})")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {"out": args.out, "figure": args.figure}
    if args.loads:
        overrides["loads_rps"] = tuple(args.loads)
    if args.duration_s:
        overrides["duration_s"] = args.duration_s
    options = ComparisonOptions.quick(**overrides) if args.quick else ComparisonOptions(**overrides)
    report = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2))
    for path in {options.out.with_suffix(".png"), options.figure} - {None}:
        plot(report["points"], options, path)  # type: ignore[arg-type]
    print(format_table(report["table"]))
    answers = report["answers"]
    print(
        f"exact canned text: {answers['exact']}; ours (routed) cache {answers['ours_routed_cache']}"
        f"; load average before {report['machine_before']['load_average_1_5_15']}, after "
        f"{report['machine_after']['load_average_1_5_15']}"
    )
    idle = ", ".join(
        f"{name} {figures['processes_cores']:.3f} cores"
        for name, figures in report["idle_cpu"].items()
    )
    print(f"idle CPU (own processes, no requests): {idle}")
    print(f"report: {options.out}")
    return report


if __name__ == "__main__":
    main()
