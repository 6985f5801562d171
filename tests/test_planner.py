"""The planner's numbers against the seed lesson's worked examples and hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.ops.planner import cli, formulas, plan
from serve_app.ops.planner.formulas import GIB, MODEL_ARCHS

REPO_ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = REPO_ROOT / "configs" / "production.yaml"
MIG_VARIANT = REPO_ROOT / "deploy" / "rayservice-mig.yaml"


def test_a100_at_3_50_per_hour_and_1000_tokens_per_s_costs_0_97_per_million(capsys) -> None:
    cli.main(
        [
            "cost",
            "--gpu-usd-per-hour",
            "3.5",
            "--tokens-per-s",
            "1000",
            "--target-usd-per-million",
            "1.0",
            "--api-usd-per-million",
            "0.90",
        ]
    )
    out = capsys.readouterr().out
    assert "$0.9722 per million tokens" in out  # 3.50 / (1000 x 3600) x 1e6
    assert "972.2 tok/s" in out  # break-even for $1.00/M: 3.50 x 1e6 / 3600
    # Self-host vs API: 3.50 x 720 h = $2,520/month; / $0.90 per M = 2,800 M tokens/month.
    assert "$2,520/month" in out and "2,800,000,000 tokens/month" in out


@pytest.mark.parametrize(("precision", "gigabytes"), [("fp16", 140), ("int8", 70), ("int4", 35)])
def test_70b_weights_by_precision_match_the_seed_table(precision: str, gigabytes: int) -> None:
    bytes_per_param = formulas.BYTES_PER_ELEMENT[precision]
    assert formulas.weights_bytes(70e9, bytes_per_param) == pytest.approx(gigabytes * 1e9)


def test_quantised_weights_keep_embeddings_in_16_bit() -> None:
    arch = MODEL_ARCHS["llama-3.1-70b"]
    embeddings = 2 * 128_256 * 8192  # embed_tokens + lm_head, untied
    expected = (70_553_706_496 - embeddings) * 0.5 + embeddings * 2
    assert formulas.weights_bytes(arch.params, 0.5, arch.unquantized_params) == expected
    assert expected / GIB == pytest.approx(35.79, abs=0.01)


def test_kv_cache_bytes_per_token_of_llama_3_1() -> None:
    eight_b, seventy_b = MODEL_ARCHS["llama-3.1-8b"], MODEL_ARCHS["llama-3.1-70b"]
    # 2 x 32 layers x 8 KV heads x 128 x 2 bytes = 128 KiB; the 70B has 80 layers: 320 KiB.
    eight_b_kv = formulas.kv_bytes_per_token(eight_b.layers, eight_b.kv_heads, eight_b.head_dim, 2)
    assert eight_b_kv == 131_072
    assert (
        formulas.kv_bytes_per_token(seventy_b.layers, seventy_b.kv_heads, seventy_b.head_dim, 2)
        == 327_680
    )


def test_seed_example_80gb_a100_with_16gb_model_holds_128_sequences_of_4096_tokens() -> None:
    per_sequence = 131_072 * 4096  # 0.5 GiB of FP16 KV for a 4096-token LLaMA-3-8B sequence
    assert per_sequence == GIB // 2
    assert formulas.max_concurrent_sequences(64 * GIB, 131_072, 4096) == 128


def test_kv_budget_is_vllm_share_of_hbm_minus_weights_and_overhead() -> None:
    budget = formulas.kv_budget_bytes(
        80 * GIB, 2, 0.9, weights=36 * GIB, overhead_bytes_per_gpu=2 * GIB
    )
    assert budget == (2 * (72 - 2) - 36) * GIB
    assert (
        formulas.kv_budget_bytes(24 * GIB, 1, 0.9, weights=30 * GIB, overhead_bytes_per_gpu=0) == 0
    )


def test_gpus_for_weights_and_for_load() -> None:
    # 140 GB of FP16 70B on A100-80G at 90 % with 1.5 GiB overhead: 70.5 GiB usable -> 2 GPUs.
    assert formulas.min_gpus_for_weights(140e9, 80 * GIB, 0.9, 1.5 * GIB) == 2
    assert formulas.min_gpus_for_weights(35e9, 80 * GIB, 0.9, 1.5 * GIB) == 1
    assert formulas.replicas_for_load(3000, 1000) == 3
    assert formulas.replicas_for_load(3001, 1000) == 4


def test_blended_cost_matches_the_seed_cascade_example() -> None:
    # "If 50% of requests route to the small model: 0.5 x $0.20 + 0.5 x $0.80 = $0.50/M."
    assert formulas.blended_usd_per_million(0.20, 0.80, 0.5) == pytest.approx(0.50)
    # Escalated small-tier answers pay for the large tier too.
    assert formulas.blended_usd_per_million(0.20, 0.80, 0.5, 0.1) == pytest.approx(0.54)


def test_production_plan_table_per_tier() -> None:
    config = plan.load_cascade_config(PRODUCTION)
    small = plan.plan_tier("small", config.tiers["small"])
    large = plan.plan_tier("large", config.tiers["large"])

    assert (small.arch.name, small.weights_precision, small.gpus) == ("llama-3.1-8b", "bf16", 1)
    assert (large.arch.name, large.weights_precision, large.gpus) == ("llama-3.1-70b", "int4", 2)
    # small: A10G 23028 MiB x 0.92 - 1.5 GiB - 16.06 GB of BF16 weights.
    hand_small = 23028 * 1024**2 * 0.92 - 1.5 * GIB - 8_030_261_248 * 2
    assert small.kv_budget == pytest.approx(hand_small)
    assert small.max_sequences(8192) == int(hand_small // (131_072 * 8192)) == 4
    # large: 2 x (80 GiB x 0.90 - 1.5 GiB) - 35.79 GiB of INT4 weights.
    hand_large = 2 * (80 * GIB * 0.90 - 1.5 * GIB) - large.weights
    assert large.kv_budget == pytest.approx(hand_large)
    assert large.max_sequences(16384) == int(hand_large // (327_680 * 16384)) == 21
    # $/M output = $/h x GPUs / (decode tok/s x 3600) x 1e6.
    assert small.usd_per_million_output == pytest.approx(1.21 / (900 * 3600) * 1e6)
    assert large.usd_per_million_output == pytest.approx(3.50 * 2 / (1500 * 3600) * 1e6)


def test_plan_command_prints_the_table_blended_cost_and_advice(capsys) -> None:
    cli.main(
        [
            "plan",
            str(PRODUCTION),
            "--small-share",
            "0.7",
            "--escalation-rate",
            "0.1",
            "--peak-output-tokens-per-s",
            "10000",
        ]
    )
    out = capsys.readouterr().out
    for column in ("VRAM/replica", "seqs@max_len", "$/M out", "break-even tok/s"):
        assert column in out
    small_out = 1.21 / (900 * 3600) * 1e6
    large_out = 7.00 / (1500 * 3600) * 1e6
    blended = 0.7 * small_out + 0.3 * large_out + 0.7 * 0.1 * large_out
    assert f"${blended:.3f}/M output" in out
    assert "70% small / 30% large" in out
    assert "small 8 replicas = 8 GPUs" in out  # 7,000 tok/s / 900 per replica
    assert "Right-sizing:" in out and "MIG 3g.40gb" in out


def test_mig_variant_is_planned_on_a_40gb_slice() -> None:
    config = plan.load_cascade_config(MIG_VARIANT)
    small = plan.plan_tier("small", config.tiers["small"])
    assert small.accelerator == "mig-3g.40gb"
    assert small.max_sequences(8192) > 4 * plan.plan_tier(
        "small", plan.load_cascade_config(PRODUCTION).tiers["small"]
    ).max_sequences(8192)


def test_architecture_is_overridable_and_unknown_models_are_named() -> None:
    arch = cli.parse_arch("layers=32,kv_heads=8,head_dim=128,params=8e9")
    assert (arch.layers, arch.kv_heads, arch.params) == (32, 8, 8e9)
    local = plan.load_cascade_config(REPO_ROOT / "configs" / "local.yaml")
    with pytest.raises(ValueError, match="unknown architecture"):
        plan.plan_tier("small", local.tiers["small"], hbm_gib=24)


def test_help_lists_the_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "plan" in out and "memory" in out and "cost" in out
