import pytest

from serve_app.accounting.cost_model import (
    LEVERS,
    CostLedger,
    LeverSplit,
    RequestCost,
    TierPrice,
    break_even_tokens_per_s,
    cpu_usd,
    split_by_lever,
    usd_per_million_tokens,
)
from serve_app.config import TierCostConfig

SMALL = TierPrice.from_config(
    TierCostConfig(gpu_usd_per_hour=1.0, decode_tokens_per_s=2_000, prefill_tokens_per_s=20_000)
)
LARGE = TierPrice.from_config(
    TierCostConfig(
        gpu_usd_per_hour=3.5,
        gpus_per_replica=2,
        decode_tokens_per_s=1_000,
        prefill_tokens_per_s=10_000,
    )
)


def test_a100_at_1000_tokens_per_s_costs_about_97_cents_per_million() -> None:
    assert usd_per_million_tokens(3.5, 1, 1_000) == pytest.approx(0.9722, abs=1e-4)


def test_tensor_parallel_replica_pays_for_every_gpu() -> None:
    assert usd_per_million_tokens(3.5, 4, 1_000) == pytest.approx(4 * 0.9722, abs=1e-3)


def test_break_even_throughput_inverts_the_price() -> None:
    tps = break_even_tokens_per_s(3.5, 1, usd_per_million_tokens(3.5, 1, 1_000))
    assert tps == pytest.approx(1_000)
    # Halving the target price needs twice the throughput.
    assert break_even_tokens_per_s(3.5, 1, 0.9722 / 2) == pytest.approx(2_000, rel=1e-3)


def test_tier_price_charges_prompt_at_prefill_and_output_at_decode_speed() -> None:
    assert LARGE.output_usd_per_token == pytest.approx(usd_per_million_tokens(3.5, 2, 1_000) / 1e6)
    assert LARGE.cost_usd(1_000, 0) < LARGE.cost_usd(0, 1_000)
    assert LARGE.cost_usd(100, 50) == pytest.approx(
        100 * LARGE.input_usd_per_token + 50 * LARGE.output_usd_per_token
    )


def test_escalated_request_pays_both_tiers() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_tier("small", SMALL, 200, 5)
    cost.charge_tier("large", LARGE, 200, 150)
    assert cost.total_usd == pytest.approx(SMALL.cost_usd(200, 5) + LARGE.cost_usd(200, 150))
    # The client got the large answer, so the counterfactual is that answer alone.
    assert cost.counterfactual_usd == pytest.approx(LARGE.cost_usd(200, 150))
    assert cost.saved_usd < 0


def test_small_tier_answer_saves_against_the_large_tier() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_router(cpu_usd(0.05, 0.01))
    cost.charge_tier("small", SMALL, 300, 120)
    assert cost.total_usd == pytest.approx(SMALL.cost_usd(300, 120) + 0.05 * 0.01 / 3600)
    assert cost.counterfactual_usd == pytest.approx(LARGE.cost_usd(300, 120))
    assert cost.saved_usd > 0


def test_cache_hit_pays_only_the_lookup() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_cache_hit(1e-7, prompt_tokens=300, completion_tokens=120)
    assert cost.cache_hit
    assert cost.tiers == []
    assert cost.total_usd == pytest.approx(1e-7)
    assert cost.counterfactual_usd == pytest.approx(LARGE.cost_usd(300, 120))


def test_zero_throughput_is_an_error_not_infinity() -> None:
    with pytest.raises(ValueError, match="tokens_per_s"):
        usd_per_million_tokens(3.5, 1, 0)


def _split(cost: RequestCost, *, pinned=False, degraded=False) -> LeverSplit:
    return split_by_lever(cost, pinned=pinned, degraded=degraded)


def _net_total(split: LeverSplit) -> float:
    return sum(split.net_usd(lever) for lever in LEVERS)


def test_cache_hit_saving_goes_to_the_cache_lever() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_cache_hit(1e-7, prompt_tokens=300, completion_tokens=120)
    split = _split(cost)
    assert split.net_usd("cache") == pytest.approx(LARGE.cost_usd(300, 120) - 1e-7)
    assert split.net_usd("routing") == 0
    assert _net_total(split) == pytest.approx(cost.saved_usd)


def test_small_tier_answer_credits_routing_and_charges_the_missed_lookup_to_cache() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_cache_lookup(2e-7)
    cost.charge_router(1e-7)
    cost.charge_tier("small", SMALL, 300, 120)
    split = _split(cost)
    assert split.net_usd("cache") == pytest.approx(-2e-7)
    assert split.net_usd("routing") == pytest.approx(
        LARGE.cost_usd(300, 120) - SMALL.cost_usd(300, 120) - 1e-7
    )
    assert _net_total(split) == pytest.approx(cost.saved_usd)


def test_escalation_charges_the_discarded_small_answer_to_the_fallback_lever() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_router(1e-7)
    cost.charge_tier("small", SMALL, 200, 5)
    cost.charge_tier("large", LARGE, 200, 150)
    split = _split(cost)
    assert split.net_usd("fallback") == pytest.approx(-SMALL.cost_usd(200, 5))
    assert split.net_usd("routing") == pytest.approx(-1e-7)
    assert _net_total(split) == pytest.approx(cost.saved_usd)
    assert all(usd >= 0 for usd in [*split.saved_usd.values(), *split.cost_usd.values()])


def test_hedge_won_by_the_small_tier_charges_the_cancelled_large_prefill_to_fallback() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_tier("small", SMALL, 200, 150)
    cost.charge_abandoned("large", LARGE, 200)
    assert [usage.tier for usage in cost.tiers] == ["large", "small"]
    assert (cost.prompt_tokens, cost.completion_tokens) == (200, 150)
    split = _split(cost)
    assert split.net_usd("fallback") == pytest.approx(-LARGE.cost_usd(200, 0))
    assert split.net_usd("routing") == pytest.approx(
        LARGE.cost_usd(200, 150) - SMALL.cost_usd(200, 150)
    )
    assert _net_total(split) == pytest.approx(cost.saved_usd)


def test_client_pinned_small_tier_is_not_credited_to_our_levers() -> None:
    cost = RequestCost(large_price=LARGE)
    cost.charge_tier("small", SMALL, 100, 10)
    split = _split(cost, pinned=True)
    assert split.net_usd("pinned") == pytest.approx(cost.saved_usd)
    assert split.net_usd("routing") == 0


def test_ledger_blends_dollars_per_million_served_tokens_cache_hits_included() -> None:
    ledger = CostLedger()
    hit = RequestCost(large_price=LARGE)
    hit.charge_cache_hit(0.0, prompt_tokens=500, completion_tokens=500)
    ledger.add(hit, _split(hit), escalated=False)
    miss = RequestCost(large_price=LARGE)
    miss.charge_tier("large", LARGE, 500, 500)
    ledger.add(miss, _split(miss), escalated=False)
    summary = ledger.summary()
    large_per_million = LARGE.cost_usd(500, 500) / 1_000 * 1e6
    assert summary["requests"] == 2 and summary["cache_hits"] == 1
    # Half the tokens were free: the blended price is half the all-large price.
    assert summary["blended_usd_per_million_tokens"] == pytest.approx(large_per_million / 2)
    assert summary["baseline_usd_per_million_tokens"] == pytest.approx(large_per_million)
    assert summary["saved_fraction"] == pytest.approx(0.5)
    assert summary["net_saved_usd_by_lever"]["cache"] == pytest.approx(LARGE.cost_usd(500, 500))
