"""Both gateways in front of one real Ray Serve LLM tier on vLLM: a short paired run (issue 18).

The fake-backend comparison (benchmarks/gateway_comparison.py) isolates the gateways from the
engine; this run checks that its picture holds in front of a real one. One local stack
(configs/local.yaml: SmolLM2-135M on vLLM's CPU build) serves two Serve applications:
- the cascade, as shipped; its `llm-small` LLMServer replica is the engine everyone shares;
- `tier-front` at `/tier`: Ray Serve LLM's own OpenAI ingress (the public `OpenAiIngress`) over
  that same replica. Called directly it is the **backend alone**: what an operator serves
  without a gateway.
LiteLLM's proxy (`make litellm-venv`) forwards to `tier-front`; ours reaches the replica through
its own ingress. Each question goes to every target in turn (the order rotated per question) at
temperature 0, streamed and not, one request at a time: the same engine answers the same
question, so a question's time through a gateway minus its time against the backend alone is
what that gateway added, and the answers must be the same text.

Targets: the backend alone; LiteLLM; ours pinned (`cascade-small`, cache bypassed); ours with
cache and router on (`cascade`: a cache miss, then routing; the quality gate off with
`x-cascade-quality: off`, so that its hold mode does not move the first token and escalations
do not add a second generation: this run measures the gateway, not the gate). The router may
send a question to `llm-large`, the same model and engine settings on a replica of its own;
the tiers used are reported.

    python -m benchmarks.gateway_real_engine      # ~5 min with the stack's start
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from ray import serve
from ray.serve.deployment import Application
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from tqdm import tqdm

from benchmarks.gateway_fake_backend import Pace
from benchmarks.gateway_load import Sample, Target, request_body, send_one
from benchmarks.gateway_stacks import (
    LITELLM_MASTER_KEY,
    LITELLM_MODEL,
    LOCAL_CONFIG,
    REPO_ROOT,
    Stacks,
)
from devtools import local_stack
from serve_app.config import TierConfig, tier_deployment_name
from serve_app.tiers.deployment import llm_config_for_tier
from serve_app.tiers.ray_llm_internals import to_model_metadata

DEFAULT_OUT = REPO_ROOT / "artifacts" / "gateway_real_engine.json"
CASCADE_APP = "cascade"
TIER_FRONT_PREFIX = "/tier"
TARGETS = ("backend", "litellm", "ours_pinned", "ours_routed")
LABELS = {
    "backend": "backend alone (Ray Serve LLM's OpenAI ingress)",
    "litellm": "LiteLLM proxy -> backend",
    "ours_pinned": "ours, pinned, cache bypassed",
    "ours_routed": "ours, cache + router on (miss)",
}
STARTUP_TIMEOUT_S = 600.0
QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "How many days are in a leap year?",
    "What does a thermometer measure?",
    "Give a synonym for happy.",
    "What is 12 times 12?",
    "Which planet is closest to the sun?",
    "What gas do plants take in?",
    "Translate 'thank you' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?",
    "How many legs does a spider have?",
    "What colour is a ripe banana?",
    "What is the square root of 81?",
    "Name a mammal that can fly.",
    "What language is spoken in Brazil?",
    "How many continents are there?",
    "What is the opposite of cold?",
    "What do bees make?",
    "What is the freezing point of water in Fahrenheit?",
    "Which organ pumps blood through the body?",
    "What is the chemical symbol for gold?",
    "How many minutes are in an hour?",
    "What is the tallest animal?",
    "What is H2O commonly called?",
    "Name the longest river in Africa.",
    "What shape has three sides?",
    "What is the main ingredient of guacamole?",
    "How many strings does a violin have?",
)


# ---- the backend alone: Ray Serve LLM's OpenAI ingress over the cascade's own tier ---------


class _TierFront(OpenAiIngress):
    """Ray Serve LLM's public OpenAI ingress, given the cascade's small-tier replica instead of
    LLMServers of its own (which `build_openai_app` would start: a second engine)."""

    def __init__(self, app_name: str, tier: dict[str, Any]) -> None:
        tier_config = TierConfig.model_validate(tier)
        model_id = tier_config.model_id
        handle = serve.get_deployment_handle(tier_deployment_name("small"), app_name=app_name)
        card = to_model_metadata(model_id, llm_config_for_tier(tier_config))
        super().__init__(llm_deployments={model_id: handle}, model_cards={model_id: card})


def build_tier_front(args: dict[str, Any]) -> Application:
    """Serve `import_path` target of the `tier-front` application."""
    deployment = serve.deployment(
        make_fastapi_ingress(_TierFront), name="tier-front", ray_actor_options={"num_cpus": 0.05}
    )
    return deployment.bind(args["app_name"], args["tier"])


def stack_config(port: int, shard_dir: Path) -> dict[str, Any]:
    """configs/local.yaml as shipped (a fresh cache shard), plus the tier front."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    (cascade,) = config["applications"]
    cascade = copy.deepcopy(cascade)
    cascade["name"] = CASCADE_APP
    cascade["args"].setdefault("cache", {})["edge_path"] = str(shard_dir)
    front = {
        "name": "tier-front",
        "route_prefix": TIER_FRONT_PREFIX,
        "import_path": "benchmarks.gateway_real_engine:build_tier_front",
        "args": {"app_name": CASCADE_APP, "tier": cascade["args"]["tiers"]["small"]},
    }
    config["http_options"] = {**config.get("http_options", {}), "port": port}
    config["applications"] = [cascade, front]
    return config


# ---- the paired run ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    questions: int = 60
    # Short answers: an engine's jitter grows with the tokens it generates, a gateway's does not.
    max_tokens: int = 8
    streams: tuple[bool, ...] = (True, False)
    out: Path = DEFAULT_OUT
    figure: Path | None = None


def targets(stack_url: str, litellm_url: str, small_model: str) -> dict[str, Target]:
    return {
        "backend": Target("backend", f"{stack_url}{TIER_FRONT_PREFIX}", small_model),
        "litellm": Target("litellm", litellm_url, LITELLM_MODEL, api_key=LITELLM_MASTER_KEY),
        "ours_pinned": Target("ours_pinned", stack_url, small_model, {"cache": False}),
        "ours_routed": Target("ours_routed", stack_url, "cascade"),
    }


async def _ask(
    session: aiohttp.ClientSession, target: Target, question: str, stream: bool, max_tokens: int
) -> Sample:
    body = request_body(target, stream=stream, max_tokens=max_tokens, question=question)
    return await send_one(session, target, body, lag_s=0.0)


async def paired_run(
    all_targets: dict[str, Target], options: RunOptions
) -> dict[bool, dict[str, list[Sample]]]:
    """Every question to every target, one request at a time, the order rotated per question."""
    samples: dict[bool, dict[str, list[Sample]]] = {
        stream: {name: [] for name in all_targets} for stream in options.streams
    }
    names = list(all_targets)
    timeout = aiohttp.ClientTimeout(total=120)
    # Only ours reads it; the gate is off so the run measures the gateway (module docstring).
    headers = {"x-cascade-quality": "off"}
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(options.questions)]
    # A repeated question would be a cache hit for ours: number the repeats apart.
    questions = [q if i < len(QUESTIONS) else f"{q} ({i})" for i, q in enumerate(questions)]
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        progress = tqdm(total=len(questions) * len(options.streams) * len(names), unit="req")
        for index, question in enumerate(questions):
            for stream in options.streams:
                order = names[index % len(names) :] + names[: index % len(names)]
                for name in order:
                    sample = await _ask(
                        session, all_targets[name], question, stream, options.max_tokens
                    )
                    samples[stream][name].append(sample)
                    progress.update()
        progress.close()
    return samples


def summarize(per_target: dict[str, list[Sample]]) -> dict[str, Any]:
    """Per target: p50 end-to-end and TTFT, and the median per-question difference against the
    backend alone (paired: the same question, the same engine, moments apart)."""
    backend = per_target["backend"]
    figures: dict[str, Any] = {}
    for name, samples in per_target.items():
        paired = [(s, b) for s, b in zip(samples, backend, strict=True) if s.ok and b.ok]
        ttft_pairs = [(s, b) for s, b in paired if s.ttft_s is not None and b.ttft_s is not None]
        figures[name] = {
            "requests": len(samples),
            "errors": sum(not s.ok for s in samples),
            "latency_p50_ms": _median([1000 * s.latency_s for s in samples if s.ok]),
            "ttft_p50_ms": _median([1000 * s.ttft_s for s in samples if s.ok and s.ttft_s]),
            "added_p50_ms": _median([1000 * (s.latency_s - b.latency_s) for s, b in paired]),
            "added_ttft_p50_ms": _median(
                [1000 * (s.ttft_s - b.ttft_s) for s, b in ttft_pairs]  # type: ignore[operator]
            ),
            "same_text_as_backend": sum(s.text == b.text for s, b in paired),
            "tiers": dict(Counter(s.tier for s in samples if s.ok and s.tier)),
            "self_reported_p50_ms": _median(
                [s.self_reported_ms for s in samples if s.ok and s.self_reported_ms is not None]
            ),
        }
    return figures


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def print_table(results: dict[str, Any]) -> None:
    for mode, figures in results["by_mode"].items():
        print(f"\n{mode}, {results['questions']} questions, max_tokens {results['max_tokens']}")
        print(
            f"{'target':<48} {'p50 ms':>8} {'TTFT p50':>9} {'added p50':>10} "
            f"{'added TTFT':>11} {'same text':>10} tiers"
        )
        for name in TARGETS:
            row = figures[name]
            print(
                f"{LABELS[name]:<48} {_cell(row['latency_p50_ms']):>8} "
                f"{_cell(row['ttft_p50_ms']):>9} {_cell(row['added_p50_ms']):>10} "
                f"{_cell(row['added_ttft_p50_ms']):>11} "
                f"{row['same_text_as_backend']:>4}/{row['requests'] - row['errors']:<5} "
                f"{row['tiers'] or ''}"
            )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gateways = [name for name in TARGETS if name != "backend"]
    fig, axes = plt.subplots(1, len(results["by_mode"]), figsize=(11, 4), squeeze=False)
    for ax, (mode, figures) in zip(axes[0], results["by_mode"].items(), strict=True):
        added = [figures[name]["added_p50_ms"] or 0.0 for name in gateways]
        ttft = [figures[name]["added_ttft_p50_ms"] or 0.0 for name in gateways]
        xs = range(len(gateways))
        ax.bar([x - 0.2 for x in xs], added, width=0.4, label="end to end")
        ax.bar([x + 0.2 for x in xs], ttft, width=0.4, label="first token")
        ax.set_xticks(list(xs), [LABELS[name].split(" (")[0] for name in gateways], fontsize=7)
        ax.set_ylabel("added over the backend alone, p50 of paired ms")
        ax.set_title(mode)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.legend()
    fig.suptitle("In front of one SmolLM2 replica on vLLM (CPU), one request at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(options: RunOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gateway-real-") as tmp:
        log_dir = Path(tmp)
        port = local_stack.free_port()
        config = stack_config(port, log_dir / "shard")
        config_path = log_dir / "stack.yaml"
        config_path.write_text(yaml.safe_dump(config))
        stack_url = f"http://127.0.0.1:{port}"
        small_model = config["applications"][0]["args"]["tiers"]["small"]["model_id"]
        serve_run = local_stack.start(str(config_path), log_dir / "serve_run.log")
        # LiteLLM is started by the comparison's own Stacks, pointed at the tier front.
        litellm = Stacks(gateway_cpus=(0, 1), backend_cpus=(0, 1), pace=Pace(), log_dir=log_dir)
        try:
            print("starting the stack (a few minutes)...", file=sys.stderr)
            local_stack.wait_ready(serve_run, stack_url, [small_model], STARTUP_TIMEOUT_S)
            local_stack.wait_http_ok(
                serve_run, f"{stack_url}{TIER_FRONT_PREFIX}/v1/models", STARTUP_TIMEOUT_S
            )
            litellm.start_litellm(
                api_base=f"{stack_url}{TIER_FRONT_PREFIX}/v1", model=f"openai/{small_model}"
            )
            all_targets = targets(stack_url, litellm.url("litellm"), small_model)
            samples = asyncio.run(paired_run(all_targets, options))
        except BaseException:
            print((log_dir / "serve_run.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            litellm.stop()
            local_stack.stop(serve_run)
    return {
        "questions": options.questions,
        "max_tokens": options.max_tokens,
        "by_mode": {
            ("streamed" if stream else "not streamed"): summarize(per_target)
            for stream, per_target in samples.items()
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_real_engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--questions", type=int, default=RunOptions.questions)
    parser.add_argument("--max-tokens", type=int, default=RunOptions.max_tokens)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results")
    parser.add_argument("--figure", type=Path, help="PNG (default: next to --out)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    options = RunOptions(
        questions=args.questions, max_tokens=args.max_tokens, out=args.out, figure=args.figure
    )
    results = run(options)
    print_table(results)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(results, indent=2))
    figure = options.figure or options.out.with_suffix(".png")
    plot(results, figure)
    print(f"\nwrote {options.out} and {figure}")


if __name__ == "__main__":
    main()
