"""The request path of the cascade, behind the OpenAI HTTP routes (gateway/ingress.py).

cache lookup ‖ routing → tier → quality gate (escalate small→large) → cache store → headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.serve.handle import DeploymentHandle

from serve_app.accounting.cost_model import RequestCost, TenantLedgers, TierPrice, cpu_usd
from serve_app.accounting.metrics import IngressMetrics
from serve_app.accounting.request_trace import RequestTrace
from serve_app.cache.client import CacheClient, CacheTicket
from serve_app.config import (
    OTHER_TENANT,
    TIER_NAMES,
    CascadeConfig,
    QualityConfig,
    RedisRateLimitStore,
    TierName,
)
from serve_app.gateway.admission import AdmissionGate
from serve_app.gateway.auth import Authenticator, RateLimits
from serve_app.gateway.budgets import SpendBudgets
from serve_app.gateway.context_fit import ContextLimits
from serve_app.gateway.request_limits import check_request_limits, read_body, request_timeout_s
from serve_app.gateway.shared_budgets import spend_budgets_from_config
from serve_app.gateway.shared_limits import rate_limits_from_config
from serve_app.gateway.shared_store import SharedStore
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import (
    DEPLOYMENT_CALL_FAILURES,
    CascadeError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    RequestTimeoutError,
    openai_error_body,
)
from serve_app.protocol.openai_api import (
    RequestKind,
    client_wants_usage_chunk,
    parse_json_object,
    parse_request_body,
    requested_max_tokens,
    validate_request,
)
from serve_app.protocol.responses import (
    Answer,
    RelayedUsage,
    replay_as_sse,
    response_as_sse,
    response_json,
    sse_event,
)
from serve_app.quality.cache_policy import uncacheable_reason
from serve_app.quality.fallback import TierFallback
from serve_app.routing.operating_point import ClientAsk, InvalidClientTarget, client_ask
from serve_app.routing.router import Router
from serve_app.routing.scorers import RouteDecision
from serve_app.routing.text import routing_text
from serve_app.tiers.availability import TierAvailability
from serve_app.tiers.client import TierClient, TierStream

logger = logging.getLogger("ray.serve")
_Item = TypeVar("_Item")


def _context_limits(config: CascadeConfig) -> ContextLimits:
    """Context length a request must fit, by pinned tier; None (routed): the longer of both,
    since a prompt too long for the small tier goes to the large one (`ContextLimits.fit`,
    which counts prompts with each tier's tokenizer; they start loading now)."""
    limits = ContextLimits(config)
    limits.preload()
    return limits


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    """Retrieve a dropped task's outcome so a late router error is not logged as unhandled."""
    if not task.cancelled():
        task.exception()


def _log_failed_charge(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.error("Debiting a request from its key's limits or budgets failed", exc_info=error)


def _key_limits(config: CascadeConfig, metrics: IngressMetrics) -> tuple[RateLimits, SpendBudgets]:
    """The keys' rate limits and dollar budgets, in the store `auth.rate_limit_store` names;
    with Redis both go through one client, so an outage pauses both at once."""
    store = config.auth.rate_limit_store
    shared = SharedStore.from_config(store) if isinstance(store, RedisRateLimitStore) else None

    def counter(check: str) -> Callable[[], None]:
        return lambda: metrics.rate_limit_fail_opens.inc(tags={"check": check})

    rate_limits = rate_limits_from_config(store, on_fail_open=counter("rate_limit"), shared=shared)
    budgets = spend_budgets_from_config(store, on_fail_open=counter("budget"), shared=shared)
    return rate_limits, budgets


async def _until_deadline(
    events: AsyncIterator[_Item], deadline_s: float | None
) -> AsyncIterator[_Item]:
    """`events` until `deadline_s` (time.monotonic()); past it, TimeoutError.

    The wait for the next event is what gets cancelled, inside the tier stream, so the
    engine's generation is aborted there (TierStream.events).
    """
    iterator = aiter(events)
    while True:
        remaining_s = None if deadline_s is None else deadline_s - time.monotonic()
        if remaining_s is not None and remaining_s <= 0:
            await iterator.aclose()  # aborts the generation
            raise TimeoutError
        try:
            async with asyncio.timeout(remaining_s):
                item = await anext(iterator)
        except StopAsyncIteration:
            return
        yield item


async def _iterate(events: list[str]) -> AsyncIterator[str]:
    for event in events:
        yield event


def _sse_response(
    events: AsyncIterator[str], trace: RequestTrace, *, cost_final: bool = True
) -> StreamingResponse:
    headers = trace.headers()
    # A relayed stream's cost is known only at its end, after the headers have left.
    headers["x-cascade-cost-final"] = "true" if cost_final else "false"
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


QualityMode = Literal["off", "hold", "relay"]
QUALITY_MODE_HEADER = "x-cascade-quality"
_QUALITY_MODES: tuple[QualityMode, ...] = ("off", "hold", "relay")


def _quality_mode(config: QualityConfig, headers: Any) -> QualityMode:
    """This request's quality gate: the config's, or the client's `x-cascade-quality` header.

    `hold` judges a routed small-tier answer before any byte leaves; `relay` streams it as it
    comes (errors before the first token still fail over; non-streamed answers are still
    judged); `off` skips the quality checks altogether.
    """
    default: QualityMode = config.stream_mode if config.enabled else "off"
    asked = headers.get(QUALITY_MODE_HEADER)
    if asked is None or not config.allow_client_override:
        return default
    mode = asked.strip().lower()
    if mode not in _QUALITY_MODES:
        raise InvalidRequestError(
            f"{QUALITY_MODE_HEADER} must be one of {', '.join(_QUALITY_MODES)}; got {asked!r}.",
            param=QUALITY_MODE_HEADER,
        )
    return mode  # type: ignore[return-value]


class RequestPipeline:
    """One request's way through the cascade, behind the HTTP routes of `CascadeIngress`:
    admission, auth and limits, cache lookup while routing, the tier call with its quality
    gate and fallback, cache store, cost and metrics."""

    def __init__(
        self,
        config: CascadeConfig,
        *,
        tiers: dict[TierName, TierClient],
        router: DeploymentHandle | Router,
        cache: CacheClient | None,
        metrics: IngressMetrics,
        tier_availability: TierAvailability | None = None,
    ):
        self.config = config
        self.router = router
        self.cache = cache
        self.metrics = metrics
        self.context_limits = _context_limits(config)
        self.fallback_router = Router({"threshold": config.router.threshold})
        self.auth = Authenticator(config.auth)
        self.rate_limiter, self.budgets = _key_limits(config, metrics)
        # Debits of finished requests from their key's limits and budgets, held until done.
        self.charges: set[asyncio.Future[None]] = set()
        self.prices = {name: TierPrice.from_config(config.tiers[name].cost) for name in TIER_NAMES}
        self.fallback = TierFallback(
            tiers,
            self.prices,
            config.quality,
            context_lengths={tier: self.context_limits[tier] for tier in TIER_NAMES},
            availability=tier_availability,
        )
        self.ledgers = TenantLedgers()
        self.ledger_since_s = time.time()
        self.admission = AdmissionGate(
            config.ingress.max_in_flight,
            retry_after_s=config.ingress.overload_retry_after_s,
            on_change=metrics.in_flight.set,
        )

    async def handle(self, request: Request, kind: RequestKind) -> Response:
        started_s: float | None = None
        streaming = completed = False
        try:
            started_s = self.admission.enter()
            response = await self._answer_request(request, kind)
            if isinstance(response, StreamingResponse):
                response.body_iterator = self.admission.release_after(
                    response.body_iterator, started_s
                )
                streaming = True
            completed = True
            return response
        except CascadeError as error:
            self.metrics.errors.inc(tags={"status": str(error.status_code)})
            if isinstance(error, OverloadedError) and started_s is not None:
                # A full tier queue (the gate's own refusals already carry this Retry-After):
                # send clients away for as long as answers actually take.
                raise self.admission.overloaded(error.message) from error
            raise
        finally:
            if started_s is not None and not streaming:
                self.admission.leave(started_s, completed=completed)

    async def explain_route(self, request: Request) -> dict[str, Any]:
        """`POST /v1/route`: where a request would go and why, behind the same admission,
        authentication and rate limit as a generation (one request from the key's budget)."""
        started_s = self.admission.enter()
        try:
            raw = await read_body(request, self.config.limits)
            await self._admit(self.auth.authenticate(request.headers))
            body = parse_json_object(raw, max_depth=self.config.limits.max_json_depth)
            kind: RequestKind = "chat" if "messages" in body else "completion"
            body = validate_request(body, kind)
            decision = await self._decide(routing_text(body, kind), body, request.headers)
        finally:
            self.admission.leave(started_s, completed=True)
        return {
            "tier": decision.tier,
            "model": self.config.tiers[decision.tier].model_id,
            "score": decision.score,
            "threshold": decision.threshold,
            "scorer": decision.scorer,
            "latency_ms": decision.latency_ms,
            **decision.explanation(),
        }

    async def _answer_request(self, request: Request, kind: RequestKind) -> Response:
        started_s = time.perf_counter()
        raw = await read_body(request, self.config.limits)
        caller = self.auth.authenticate(request.headers)
        await self._admit(caller)
        body = parse_request_body(raw, kind, max_depth=self.config.limits.max_json_depth)
        timeout_s = request_timeout_s(request.headers, self.config.ingress.request_timeout_s)
        pinned_tier = self._pinned_tier(body["model"])
        quality_mode = _quality_mode(self.config.quality, request.headers)
        check_request_limits(body, kind, self.config.limits, self.context_limits[pinned_tier])
        context_fit = await self.context_limits.fit(body, kind, pinned_tier)
        trace = RequestTrace(
            pinned=pinned_tier is not None, cost=RequestCost(self.prices["large"]), caller=caller
        )
        ticket = None
        if self.cache is not None:
            ticket = self.cache.ticket(body, kind, tenant=caller.tenant, headers=request.headers)
        # Route while the cache looks up; a hit answers at once and drops the routing.
        routing = asyncio.ensure_future(
            self._route(body, kind, pinned_tier, trace, request.headers)
        )
        lookup = await self._lookup(ticket, trace)
        if lookup is not None:
            routing.cancel()
            routing.add_done_callback(_discard_outcome)
            self._record(trace, started_s, streamed=bool(body.get("stream")))
            return self._cached_response(lookup, body, kind, trace)
        trace.tier = await routing
        context_fit.steer(trace)
        trace.deadline_s = time.monotonic() + timeout_s
        try:
            # On expiry the tier call is cancelled, which aborts the generation in the engine.
            async with asyncio.timeout(timeout_s):
                if body.get("stream"):
                    return await self._stream(body, kind, trace, ticket, started_s, quality_mode)
                response = await self._complete(body, kind, trace, ticket, started_s, quality_mode)
        except TimeoutError as e:
            raise RequestTimeoutError(f"The request did not finish within {timeout_s:g} s.") from e
        self._record(trace, started_s)
        return response

    async def _admit(self, caller: Caller) -> None:
        """Refuse a caller past its dollar budget or its rate limit (429). The budget first:
        its refusal lasts until the period ends, and takes nothing from the rate limit."""
        await self.budgets.check(caller)
        await self.rate_limiter.admit(caller)

    def cost_summary(self, tenant: str | None = None) -> dict[str, object]:
        """This replica's cost totals, of every tenant or of one tenant label (a configured
        tenant, or `other` for every other caller)."""
        if tenant is not None:
            known = sorted({key.tenant for key in self.auth.keys} | {OTHER_TENANT})
            if tenant not in known:
                raise InvalidRequestError(
                    f"Unknown tenant {tenant!r}; known: {', '.join(known)}.", param="tenant"
                )
        return self.ledgers.summary(tenant)

    def _record(self, trace: RequestTrace, started_s: float, *, streamed: bool = False) -> None:
        """Count a finished request; a replayed stream's first token comes at the very end."""
        latency_s = time.perf_counter() - started_s
        split = self.metrics.record(trace, latency_s)
        self.ledgers.add(trace.tenant_label, trace.cost, split, escalated=trace.escalated)
        if trace.caller is not None:
            tokens = sum(u.prompt_tokens + u.completion_tokens for u in trace.cost.tiers)
            self._charge_later(trace.caller, tokens, trace.cost.total_usd)
        if streamed:
            self.metrics.observe_ttft(trace, latency_s)

    def _charge_later(self, caller: Caller, tokens: int, usd: float) -> None:
        """Debit the tokens from the key's rate limit and the dollars from its budgets in the
        background: the answer is ready, and it need not wait on a shared store."""
        key = caller.key
        if key is None:
            return
        if tokens and key.tokens_per_minute is not None:
            self._in_background(self.rate_limiter.charge_tokens(caller, tokens))
        if usd > 0 and (key.usd_per_day is not None or key.usd_per_month is not None):
            self._in_background(self.budgets.charge(caller, usd))

    def _in_background(self, charge: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(charge)
        self.charges.add(task)
        task.add_done_callback(self.charges.discard)
        task.add_done_callback(_log_failed_charge)

    def _pinned_tier(self, model: str) -> TierName | None:
        """The tier a model name pins; None for the cascade's name and its aliases (routed,
        an alias at its own target: `router.aliases`)."""
        if model == self.config.ingress.cascade_model_id or model in self.config.router.aliases:
            return None
        tier = self.config.tier_for_model(model)
        if tier is None:
            raise ModelNotFoundError(model, self.config.served_model_ids())
        return tier

    async def _lookup(self, ticket: CacheTicket | None, trace: RequestTrace) -> Answer | None:
        if ticket is None or self.cache is None:
            trace.cache = "bypass"
            return None
        result = await self.cache.lookup(ticket)
        if result is None:
            trace.cache = "error"
            return None
        stored = result.answer
        if stored is None:
            trace.cache = "error" if result.kind == "error" else "miss"
            trace.cost.charge_cache_lookup(self._cpu_usd(result.latency_ms))
            return None
        trace.cache = "hit"
        trace.tier = stored.tier
        trace.cost.charge_cache_hit(
            self._cpu_usd(result.latency_ms), stored.prompt_tokens, stored.completion_tokens
        )
        return Answer(
            text=stored.answer_text,
            finish_reason=stored.finish_reason,
            prompt_tokens=stored.prompt_tokens,
            completion_tokens=stored.completion_tokens,
            model=self.config.tiers[stored.tier].model_id,
        )

    async def _route(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        pinned: TierName | None,
        trace: RequestTrace,
        headers: Any = None,
    ) -> TierName:
        """The tier for a request: its pinned one, else the router's decision at the
        operator's target, or at the request's own (a model alias, or the
        `x-cascade-large-share` header among `headers`) within `router.client_bounds`."""
        if pinned is not None:
            return pinned
        decision = await self._decide(routing_text(body, kind), body, headers)
        trace.routed_to = decision.tier
        trace.route_score = decision.score
        trace.cost.charge_router(self._cpu_usd(decision.latency_ms))
        return decision.tier

    async def _decide(self, text: str, body: dict[str, Any], headers: Any) -> RouteDecision:
        """The routing decision for `text`, at the request's own target if it asks for one (a
        model alias or `x-cascade-large-share`, within `router.client_bounds`)."""
        try:
            ask = client_ask(self.config.router, body.get("model"), headers)
        except InvalidClientTarget as e:
            raise InvalidRequestError(str(e), param=e.param) from e
        decision = await self._ask_router(text, ask)
        if decision is None:
            # Router down or slow: the documented heuristic, computed here, keeps requests
            # flowing (at the operator's threshold: the heuristic has no curve for an ask).
            decision = await self.fallback_router.route(text, ask)
        return decision

    async def _ask_router(self, text: str, ask: ClientAsk | None = None) -> RouteDecision | None:
        """The router deployment's decision (at `ask`'s target when the request has one), or
        None (counted, by reason) when its call fails or overruns `router.timeout_s`.

        Routing happens before the request's deadline starts, so this budget is all that stands
        between a hung router replica and a hung request. An abandoned call is cancelled and
        its outcome retrieved: a late reply is dropped without an "exception was never
        retrieved" log, and a hung replica leaves no awaiting task behind per request.
        """
        if isinstance(self.router, Router):
            return await self._route_here(text, ask)
        call: asyncio.Future[RouteDecision] | None = None
        try:
            remote = self.router.route.remote
            call = asyncio.ensure_future(remote(text) if ask is None else remote(text, ask))
            done, _ = await asyncio.wait({call}, timeout=self.config.router.timeout_s)
            if done:
                return call.result()
            reason = "timeout"
            logger.warning(
                "Router took over %g s; routing with the heuristic", self.config.router.timeout_s
            )
        except DEPLOYMENT_CALL_FAILURES as e:
            reason = "error"
            logger.warning("Router unavailable (%s); routing with the heuristic", type(e).__name__)
        finally:
            # Also when this routing is dropped (a cache hit cancels it).
            if call is not None and not call.done():
                call.cancel()
                call.add_done_callback(_discard_outcome)
        self.metrics.router_fallbacks.inc(tags={"reason": reason})
        return None

    async def _route_here(self, text: str, ask: ClientAsk | None) -> RouteDecision | None:
        """The decision of the router scoring in this replica, or None (counted as an `error`
        fallback) when its scorer fails: a scorer bug must not fail the request."""
        assert isinstance(self.router, Router)
        try:
            return await self.router.route(text, ask)
        except Exception:
            logger.exception("Router failed to score a request; routing with the heuristic")
        self.metrics.router_fallbacks.inc(tags={"reason": "error"})
        return None

    def _cpu_usd(self, latency_ms: float) -> float:
        """Price of CPU work (cache lookup, routing) at the configured CPU core price."""
        return cpu_usd(self.config.ingress.cpu_usd_per_hour, latency_ms / 1000)

    def _cached_response(
        self, answer: Answer, body: dict[str, Any], kind: RequestKind, trace: RequestTrace
    ) -> Response:
        if body.get("stream"):
            events = replay_as_sse(answer, kind, include_usage=client_wants_usage_chunk(body))
            return _sse_response(_iterate(events), trace)
        return JSONResponse(response_json(answer, kind), headers=trace.headers())

    # ---- non-streamed ------------------------------------------------------------------

    async def _complete(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        ticket: CacheTicket | None,
        started_s: float,
        quality_mode: QualityMode,
    ) -> Response:
        check_quality = quality_mode != "off"
        response, answer = await self.fallback.answer(
            body, kind, trace, check_quality=check_quality
        )
        self._store(ticket, answer, trace, requested_max_tokens(body, kind), gate_on=check_quality)
        self._note_gateway_time(trace, started_s)
        return JSONResponse(response, headers=trace.headers())

    def _note_gateway_time(self, trace: RequestTrace, started_s: float) -> None:
        trace.note_gateway_time(started_s, time.perf_counter())
        self.metrics.observe_gateway_overhead(trace)

    def _store(
        self,
        ticket: CacheTicket | None,
        answer: Answer,
        trace: RequestTrace,
        max_tokens: int | None,
        *,
        gate_on: bool,
        unjudged: bool = False,
    ) -> None:
        """Cache the answer if the request is cacheable and the cache policy lets it in."""
        if ticket is None or self.cache is None or trace.tier is None:
            return
        reason = uncacheable_reason(
            answer,
            trace,
            self.fallback.gate,
            max_tokens=max_tokens,
            gate_on=gate_on,
            unjudged=unjudged,
        )
        if reason is not None:
            logger.debug("Answer not cached: %s", reason)
            return
        self.cache.store(ticket, answer, trace.tier)

    # ---- streamed ----------------------------------------------------------------------

    async def _stream(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        ticket: CacheTicket | None,
        started_s: float,
        quality_mode: QualityMode,
    ) -> Response:
        if not trace.pinned and trace.tier == "small" and quality_mode == "hold":
            # Hold the small tier's answer until the gate has judged it, so the client never
            # sees small-tier text that an escalation would then replace.
            # An escalated answer was generated non-streamed by the large tier; replay it too.
            # The whole response is replayed: every choice, tool calls and logprobs with it.
            response, answer = await self.fallback.answer(body, kind, trace)
            self._store(ticket, answer, trace, requested_max_tokens(body, kind), gate_on=True)
            self._note_gateway_time(trace, started_s)
            self._record(trace, started_s, streamed=True)
            wants_usage = client_wants_usage_chunk(body)
            events = response_as_sse(response, kind, include_usage=wants_usage)
            return _sse_response(_iterate(events), trace)
        stream = await self.fallback.open_stream(body, kind, trace)
        self.metrics.observe_ttft(trace, time.perf_counter() - started_s)
        self._note_gateway_time(trace, started_s)
        relay = self._relay(stream, body, kind, trace, ticket, started_s, quality_mode)
        return _sse_response(relay, trace, cost_final=False)

    async def _relay(
        self,
        stream: TierStream,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        ticket: CacheTicket | None,
        started_s: float,
        quality_mode: QualityMode,
    ) -> AsyncIterator[str]:
        """Relay the tier's stream until it ends, the deadline passes or the client leaves.

        However it ends, the request is charged for the tokens the engine generated (the
        engine reports usage on every chunk) and counted; a generation that did not end on its
        own is aborted in the engine. Only a complete answer is cached.
        """
        relayed = RelayedUsage(body)
        ending = "disconnect"  # unless the loop below ends otherwise: the client went away
        try:
            async for event, payload in _until_deadline(stream.events(), trace.deadline_s):
                event = relayed.client_event(event, payload)
                if event is not None:
                    yield event
            ending = "complete"
        except TimeoutError:
            ending = "deadline"
            # The status line has left with a 200: the 504 travels as the stream's last event.
            error = RequestTimeoutError("The request did not finish within its deadline.")
            yield sse_event(openai_error_body(error))
        finally:
            if ending != "complete":
                stream.cancel()  # abort the generation now, not when the relay is collected
            self._settle_relay(
                stream.answer(), body, kind, trace, ticket, started_s, ending, quality_mode
            )

    def _settle_relay(
        self,
        answer: Answer,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        ticket: CacheTicket | None,
        started_s: float,
        ending: str,
        quality_mode: QualityMode,
    ) -> None:
        """Charge and count a relayed stream however it ended; cache it only if complete.

        Synchronous on purpose: it also runs while the relay is being closed (client gone),
        where nothing may be awaited.
        """
        trace.cost.charge_tier(
            trace.tier, self.prices[trace.tier], answer.prompt_tokens, answer.completion_tokens
        )
        if ending != "complete":
            self.metrics.streams_cut.inc(tags={"reason": ending})
        else:
            # A routed small-tier stream relayed as it came was never judged by the gate.
            unjudged = not trace.pinned and trace.tier == "small"
            self._store(
                ticket,
                answer,
                trace,
                requested_max_tokens(body, kind),
                gate_on=quality_mode != "off",
                unjudged=unjudged,
            )
        self._record(trace, started_s)
