"""Complexity router: scores P(request needs the large tier) and picks a tier.

`Router` is a plain class; its `ServedRouter` subclass (which also reports the heuristic-mode
metric) runs in the ingress for cheap scorers, or wrapped in `serve.deployment` by the builder
for scorers that run an encoder (serve_app.routing.placement). The scorers it holds (a fine-tuned HF
sequence classifier when a checkpoint is configured, else, or when that checkpoint cannot be
loaded, a deterministic heuristic) live in the Ray-free serve_app.routing.scorers. Concurrent
requests are scored together through Ray Serve's `@serve.batch`; this is the only routing
module that imports Ray.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray import serve
from ray.serve.exceptions import RayServeException

from serve_app.config import RouterConfig
from serve_app.routing.operating_point import ClientAsk
from serve_app.routing.scorers import (
    ActiveScorer,
    HeuristicReason,
    RouteDecision,
    Scorer,
    ScorerName,
    load_active_scorer,
)

_Batcher = Callable[[str], Awaitable[tuple[float, ActiveScorer]]]


class Router:
    """Routes a request to the large tier when its score reaches the threshold.

    Concurrent `route()` calls are batched with Ray Serve's `@serve.batch`: one forward
    pass (or one heuristic sweep) scores every request waiting at that moment. A configured
    checkpoint that fails to load does not fail the deployment: the router falls back to the
    heuristic and says why in `fallback_reason`.
    """

    def __init__(self, config: RouterConfig | dict[str, Any], *, batched: bool = True) -> None:
        self._active = load_active_scorer(RouterConfig.model_validate(config))
        # Batching pays for a forward pass; a router scoring in the ingress (cheap scorers,
        # serve_app.routing.placement) scores each request as it comes.
        self._batched = batched
        self._batcher: _Batcher | None = None
        self._batcher_loop: asyncio.AbstractEventLoop | None = None
        self._on_apply(self._active)

    # The current scorer's view, for callers that inspect the router.
    @property
    def config(self) -> RouterConfig:
        return self._active.config

    @property
    def scorer(self) -> Scorer:
        return self._active.scorer

    @property
    def scorer_name(self) -> ScorerName:
        return self._active.name

    @property
    def threshold(self) -> float:
        return self._active.threshold

    @property
    def fallback_reason(self) -> str | None:
        return self._active.fallback_reason

    @property
    def heuristic_reason(self) -> HeuristicReason | None:
        return self._active.heuristic_reason

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve `user_config` hook: validate, load the new scorer, then swap it in.

        Keys not in `user_config` keep their current values, so `{"checkpoint": ...}` alone
        swaps the model. The checkpoint is always reloaded: a retrained router is usually
        exported over the old directory. Loading runs in a thread, so requests keep being
        routed by the old scorer meanwhile; a batch already running finishes with the scorer
        it started with, and the next batch uses the new one. Nothing is dropped.
        """
        config = RouterConfig.model_validate({**self.config.model_dump(), **user_config})
        active = await asyncio.to_thread(load_active_scorer, config)
        self._active = active  # one assignment: no request sees a half-updated router
        if self._batcher is not None:
            self._batcher.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
            self._batcher.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
                config.batch_wait_timeout_s
            )
        self._on_apply(active)

    def _on_apply(self, active: ActiveScorer) -> None:
        """Hook run after a scorer is swapped in (the served deployment reports metrics)."""

    async def route(self, text: str, ask: ClientAsk | None = None) -> RouteDecision:
        """The tier for `text`, at the operator's threshold, or at the threshold of this
        request's own `ask` (a model alias or the large-share header) within
        `router.client_bounds`. Only the scoring is batched; the threshold is per request."""
        start_s = time.perf_counter()
        if self._batched and _in_serve_replica():
            score, active = await self._batch_for_this_loop()(text)
        else:
            # Ray's serve.batch only runs inside a replica (it reads the replica's
            # max_ongoing_requests); scripts such as the export check score one by one.
            ((score, active),) = await self._score_batch([text])
        latency_ms = (time.perf_counter() - start_s) * 1000.0
        return active.decide(score, latency_ms, ask)

    def _batch_for_this_loop(self) -> _Batcher:
        # A serve.batch queue lives on the event loop that first used it; a replica has one
        # loop for its lifetime, but a script calling asyncio.run() twice has two.
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher_loop is not loop:
            config = self.config
            self._batcher = serve.batch(
                max_batch_size=config.max_batch_size,
                batch_wait_timeout_s=config.batch_wait_timeout_s,
            )(self._score_batch)
            self._batcher_loop = loop
        return self._batcher

    async def _score_batch(self, texts: list[str]) -> list[tuple[float, ActiveScorer]]:
        active = self._active  # the whole batch is scored by one scorer, old or new
        if active.name == "classifier":
            # A forward pass takes milliseconds of CPU; keep the event loop serving.
            scores = await asyncio.to_thread(active.scorer.score_batch, texts)
        else:
            scores = active.scorer.score_batch(texts)
        return [(score, active) for score in scores]

    def check_health(self) -> None:
        """Always healthy once constructed: a broken checkpoint already fell back."""


def _in_serve_replica() -> bool:
    try:
        serve.get_replica_context()
    except RayServeException:
        return False
    return True


class ServedRouter(Router):
    """The router that routes requests (the router deployment, or the ingress's own when it
    scores there): also says on a metric whether it is in heuristic mode, and why.

    Kept apart from `Router` because the ingress holds a heuristic `Router` of its own for
    when the router is down or slow; that one must not report the router's mode.
    """

    def __init__(self, config: RouterConfig | dict[str, Any], *, batched: bool = True) -> None:
        from serve_app.accounting.metrics import RouterMetrics

        self._metrics = RouterMetrics.create()
        super().__init__(config, batched=batched)

    def _on_apply(self, active: ActiveScorer) -> None:
        self._metrics.report_mode(active.heuristic_reason)
