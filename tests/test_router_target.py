"""The operator's knob in money or quality, and a client's cheaper or safer ask (issue 20).

The operator states `router.target` (a large-tier share or a fraction of all-large quality);
the threshold is derived on the cost-quality curve the router card measured on held-out
prompts. A client may ask for its own request (a model alias, or the `x-cascade-large-share`
header) within `router.client_bounds`. Everything here is Ray-free: the shipped router, the
real `Router` class, and the gateway's `_route` with a handle that calls that router.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from serve_app.accounting.cost_model import RequestCost, TierPrice
from serve_app.accounting.metrics import IngressMetrics
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import CascadeConfig, RouterConfig, RouterTarget
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.protocol.errors import InvalidRequestError, ModelNotFoundError
from serve_app.routing.operating_point import (
    LARGE_SHARE_HEADER,
    OPERATING_CURVE_KEY,
    ClientAsk,
    OperatingCurve,
    client_ask,
)
from serve_app.routing.router import Router
from serve_app.routing.scorers import BUILTIN_ROUTERS, ROUTER_CARD_FILE, load_active_scorer
from tests.helpers import ScriptedTier, chat_body

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "builtin://default-router"
CARD = json.loads((BUILTIN_ROUTERS["default-router"] / ROUTER_CARD_FILE).read_text())
BOUNDS = {"min_large_share": 0.3, "max_large_share": 0.95}
ALIASES = {"cascade-cheaper": {"large_share": 0.5}, "cascade-safer": {"quality": 0.98}}
# 41 words: the shipped router (a model of prompt length) scores it between its default
# threshold (95% quality, ~35 words) and the cheaper alias's (half the requests large).
BORDERLINE = (
    "I am planning a small vegetable garden on a balcony that gets about five hours of sun a "
    "day. Which vegetables grow well in containers there, how deep should the pots be, and "
    "how often should I water them in summer?"
)
# 26 words: below the default threshold, above the safer alias's.
SHORTISH = (
    "Explain in two or three sentences why the sky looks blue during the day but red and "
    "orange at sunset, and what role the atmosphere plays."
)
TIER_COST = {"gpu_usd_per_hour": 1.0, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}


def _active(**router: Any):
    return load_active_scorer(RouterConfig.model_validate({"checkpoint": DEFAULT, **router}))


# ---------------------------------------------------------------- the card's curve


def test_the_card_carries_its_curve_measured_on_held_out_prompts() -> None:
    curve = OperatingCurve.from_card(CARD)
    assert curve is not None
    assert "validation split" in curve.data and curve.num_prompts == 987
    # The card's threshold is a point of the curve, and the curve reads there what the
    # calibration recorded.
    point = curve.at(CARD["threshold"])
    calibration = CARD["calibration"]
    assert point.large_share == pytest.approx(calibration["large_share"], abs=1e-12)
    assert point.quality * curve.all_large_quality == pytest.approx(calibration["quality"])
    # From everything large (all-large quality) to everything small.
    assert curve.at(0.0).large_share == 1.0 and curve.at(0.0).quality == pytest.approx(1.0)
    assert curve.at(1.0).large_share == 0.0
    assert curve.at(1.0).quality == pytest.approx(
        calibration["all_small_quality"] / calibration["all_large_quality"]
    )


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.8, 0.95])
def test_a_large_share_target_gives_that_share_on_the_curve(share: float) -> None:
    active = _active(target={"large_share": share})
    point = active.operating_point
    assert point.source == "target" and point.target == {"large_share": share}
    assert point.expected is not None
    assert point.expected.large_share == pytest.approx(share, abs=1e-9)
    assert active.threshold == point.expected.threshold


def test_a_stricter_quality_target_never_gives_a_higher_threshold() -> None:
    curve = OperatingCurve.from_card(CARD)
    assert curve is not None
    targets = np.linspace(0.70, 1.0, 61)
    thresholds = [curve.threshold_for_quality(q) for q in targets]
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:], strict=False))
    # And each is met on the held-out prompts.
    for target, threshold in zip(targets, thresholds, strict=True):
        assert curve.at(threshold).quality >= target


def test_the_shipped_target_is_the_cards_calibration_so_routing_is_unchanged() -> None:
    for name in ("local.yaml", "production.yaml"):
        (app,) = yaml.safe_load((ROOT / "configs" / name).read_text())["applications"]
        config = CascadeConfig.model_validate(app["args"])
        assert config.router.target is not None
        assert config.router.target.as_dict() == {"quality": 0.95}
        active = load_active_scorer(config.router)
        assert active.operating_point.source == "target"
        assert active.threshold == CARD["threshold"]


def test_precedence_threshold_then_target_then_card_then_default() -> None:
    explicit = _active(threshold=0.3, target={"large_share": 0.5})
    assert (explicit.threshold, explicit.operating_point.source) == (0.3, "threshold")
    assert explicit.operating_point.note == "router.threshold overrides router.target"
    card = _active()
    assert (card.threshold, card.operating_point.source) == (CARD["threshold"], "card")
    # The heuristic has no curve: a target cannot be read on it, and says so.
    heuristic = load_active_scorer(RouterConfig(target={"quality": 0.9}))
    assert (heuristic.threshold, heuristic.operating_point.source) == (0.5, "default")
    assert "no operating curve" in (heuristic.operating_point.note or "")


def test_a_card_without_a_curve_keeps_its_threshold(tmp_path) -> None:
    for item in BUILTIN_ROUTERS["default-router"].iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    card = {k: v for k, v in CARD.items() if k != OPERATING_CURVE_KEY}
    (tmp_path / ROUTER_CARD_FILE).write_text(json.dumps(card))
    active = load_active_scorer(RouterConfig(checkpoint=str(tmp_path), target={"large_share": 0.3}))
    assert active.name == "classifier"
    assert (active.threshold, active.operating_point.source) == (CARD["threshold"], "card")


def test_curve_measure_matches_a_hand_computed_case() -> None:
    # Four prompts; the large tier is better on the two highest-scored.
    curve = OperatingCurve.measure(
        [0.1, 0.4, 0.6, 0.9], weak=[1, 1, 0, 0], strong=[1, 1, 1, 1], data="four prompts"
    )
    assert curve.thresholds.tolist() == [0.0, 0.1, 0.4, 0.6, 0.9, 1.0]
    assert curve.large_share.tolist() == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    assert curve.quality.tolist() == [1.0, 1.0, 1.0, 1.0, 0.75, 0.5]
    assert curve.recovered_quality is not None
    assert curve.recovered_quality.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.0]
    # Half the prompts large: 0.6; 3/8 large is halfway between 0.6 and 0.9.
    assert curve.threshold_for_large_share(0.5) == pytest.approx(0.6)
    assert curve.threshold_for_large_share(0.375) == pytest.approx(0.75)
    assert curve.threshold_for_quality(1.0) == 0.6  # the fewest large calls at full quality
    again = OperatingCurve.from_card({OPERATING_CURVE_KEY: curve.to_card()})
    assert again is not None and again.to_card() == curve.to_card()


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "router, message",
    [
        ({"target": {"large_share": 0.3, "quality": 0.9}}, "exactly one"),
        ({"target": {}}, "exactly one"),
        ({"target": {"quality": 1.2}}, "quality"),
        ({"aliases": ALIASES}, "client_bounds"),
        ({"client_bounds": {"min_large_share": 0.8, "max_large_share": 0.2}}, "must not exceed"),
    ],
)
def test_bad_targets_and_bounds_are_config_errors(router: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RouterConfig.model_validate(router)


def test_an_alias_may_not_take_a_tier_model_name() -> None:
    with pytest.raises(ValidationError, match="distinct"):
        _config(client_bounds=BOUNDS, aliases={"cascade-small": {"large_share": 0.5}})


# ---------------------------------------------------------------- a request's own target


def test_a_client_asking_beyond_the_bounds_is_clamped() -> None:
    active = _active(target={"quality": 0.95}, client_bounds=BOUNDS)
    config = active.config
    cheap = client_ask(config, "cascade", {LARGE_SHARE_HEADER: "0.05"})
    safe = client_ask(config, "cascade", {LARGE_SHARE_HEADER: "1"})
    within = client_ask(config, "cascade", {LARGE_SHARE_HEADER: "0.6"})
    assert cheap is not None and safe is not None and within is not None
    for ask, share, clamped in ((cheap, 0.3, True), (safe, 0.95, True), (within, 0.6, False)):
        request = active.decide(0.2, 0.0, ask).request
        assert request is not None and request.honoured
        assert request.clamped is clamped
        assert request.expected is not None
        assert request.expected.large_share == pytest.approx(share, abs=1e-9)
        assert request.threshold == request.expected.threshold
    assert active.decide(0.2, 0.0, cheap).request.target == {"large_share": 0.05}  # type: ignore[union-attr]


def test_a_quality_ask_is_clamped_in_large_share_terms() -> None:
    active = _active(client_bounds={"min_large_share": 0.0, "max_large_share": 0.6})
    ask = ClientAsk("model cascade-best", RouterTarget(quality=1.0))
    request = active.decide(0.5, 0.0, ask).request
    assert request is not None and request.clamped
    assert request.expected is not None
    assert request.expected.large_share == pytest.approx(0.6, abs=1e-9)


def test_without_bounds_clients_cannot_ask() -> None:
    assert client_ask(RouterConfig(), "cascade", {LARGE_SHARE_HEADER: "0.1"}) is None


@pytest.mark.parametrize("value", ["cheap", "1.5", "-0.1", "nan", ""])
def test_a_malformed_large_share_header_is_a_400(pipeline: RequestPipeline, value: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        _route(pipeline, "cascade", BORDERLINE, {LARGE_SHARE_HEADER: value})
    assert error.value.status_code == 400 and error.value.param == LARGE_SHARE_HEADER


def test_the_route_explanation_shows_the_target_and_the_requests_own() -> None:
    active = _active(target={"quality": 0.95}, client_bounds=BOUNDS, aliases=ALIASES)
    ask = client_ask(active.config, "cascade-cheaper")
    shown = active.decide(0.242, 0.1, ask).explanation()
    operator = shown["operating_point"]
    assert operator["target"] == {"quality": 0.95}
    assert operator["threshold"] == CARD["threshold"] and operator["threshold_from"] == "target"
    assert operator["expected"]["large_share"] == pytest.approx(0.802, abs=1e-3)
    assert operator["expected"]["quality"] >= 0.95
    assert "validation split" in operator["curve_data"]
    own = shown["request_target"]
    assert own["asked_by"] == "model cascade-cheaper" and own["target"] == {"large_share": 0.5}
    assert own["honoured"] and not own["clamped"]
    assert own["expected"]["large_share"] == pytest.approx(0.5, abs=1e-9)
    assert own["threshold"] > operator["threshold"]
    assert active.decide(0.242, 0.1).explanation()["request_target"] is None


# ---------------------------------------------------------------- through the gateway


class RouterHandle:
    """The router deployment's handle, calling a real `Router` in this process."""

    def __init__(self, router: Router) -> None:
        self.route = self
        self.router = router

    def remote(self, text: str, *ask: Any) -> Any:
        return self.router.route(text, *ask)


def _config(**router: Any) -> CascadeConfig:
    tier = {"model_source": "stand-in", "accelerator": "cpu", "cost": TIER_COST}
    return CascadeConfig.model_validate(
        {
            # A generous budget: a busy shared box must not send the real router's call to
            # the heuristic (tests/test_router_budget.py tests the budget).
            "router": {
                "checkpoint": DEFAULT,
                "target": {"quality": 0.95},
                "timeout_s": 10.0,
                **router,
            },
            "tiers": {
                "small": {"model_id": "cascade-small", **tier},
                "large": {"model_id": "cascade-large", **tier},
            },
        }
    )


@pytest.fixture(scope="module")
def pipeline() -> RequestPipeline:
    config = _config(client_bounds=BOUNDS, aliases=ALIASES)
    tiers = {"small": ScriptedTier("cascade-small"), "large": ScriptedTier("cascade-large")}
    return RequestPipeline(
        config,
        tiers=tiers,  # type: ignore[arg-type]
        router=RouterHandle(Router(config.router)),  # type: ignore[arg-type]
        cache=None,
        metrics=IngressMetrics.create(),
    )


def _route(pipeline: RequestPipeline, model: str, text: str, headers: Any = None) -> str:
    pinned = pipeline._pinned_tier(model)
    trace = RequestTrace(pinned=pinned is not None, cost=RequestCost(TierPrice(1e-6, 2e-6)))
    body = chat_body(text, model=model)
    return asyncio.run(pipeline._route(body, "chat", pinned, trace, headers))


def test_an_alias_routes_a_borderline_prompt_differently_from_the_default(
    pipeline: RequestPipeline,
) -> None:
    router = pipeline.router.router  # type: ignore[attr-defined]
    cheaper = router._active.config.aliases["cascade-cheaper"]
    cheaper_threshold = router._active.curve.threshold_for(cheaper)
    (score,) = router.scorer.score_batch([BORDERLINE])
    assert router.threshold <= score < cheaper_threshold  # the prompt is borderline
    assert _route(pipeline, "cascade", BORDERLINE) == "large"
    assert _route(pipeline, "cascade-cheaper", BORDERLINE) == "small"
    assert _route(pipeline, "cascade-safer", BORDERLINE) == "large"
    # And the other way: a shorter prompt goes small by default, large when asked safer.
    assert _route(pipeline, "cascade", SHORTISH) == "small"
    assert _route(pipeline, "cascade-safer", SHORTISH) == "large"
    # The header is finer than an alias, and wins over it.
    cheap_header = {LARGE_SHARE_HEADER: "0.3"}
    assert _route(pipeline, "cascade", BORDERLINE, cheap_header) == "small"
    assert _route(pipeline, "cascade-safer", BORDERLINE, cheap_header) == "small"
    # Pinned tiers are not routed at all.
    assert _route(pipeline, "cascade-small", BORDERLINE) == "small"


def test_an_unknown_alias_is_model_not_found(pipeline: RequestPipeline) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        pipeline._pinned_tier("cascade-cheapest")
    assert error.value.status_code == 404 and error.value.code == "model_not_found"
    # The 404 lists what a client may use, aliases included.
    assert "cascade-cheaper" in error.value.message and "cascade-safer" in error.value.message


def test_when_the_router_is_down_an_ask_routes_at_the_operators_threshold(
    pipeline: RequestPipeline,
) -> None:
    ask = client_ask(pipeline.config.router, "cascade-cheaper")
    decision = asyncio.run(pipeline.fallback_router.route(BORDERLINE, ask))
    assert decision.scorer == "heuristic" and decision.request is not None
    assert not decision.request.honoured and decision.threshold == 0.5


def test_route_decision_crosses_the_handle_as_before_without_an_ask() -> None:
    # A request without an ask calls route(text) exactly as before (older stand-ins and
    # replicas take one argument).
    calls: list[tuple] = []

    class OneArgument:
        def __init__(self) -> None:
            self.route = self

        async def _answer(self, text: str):
            calls.append((text,))
            return await Router({}).route(text)

        def remote(self, text: str) -> Any:
            return self._answer(text)

    tiers = {"small": ScriptedTier("cascade-small"), "large": ScriptedTier("cascade-large")}
    pipeline = RequestPipeline(
        _config(),
        tiers=tiers,  # type: ignore[arg-type]
        router=OneArgument(),  # type: ignore[arg-type]
        cache=None,
        metrics=IngressMetrics.create(),
    )
    assert _route(pipeline, "cascade", "hi") == "small"
    assert calls == [("hi",)]
