"""Getting one good answer out of the tiers: quality escalation, error fallback, breakers.

- A routed request the router sent to the small tier is judged by the quality gate; a weak
  answer, an error or an open small-tier circuit escalates it to the large tier, at most
  once. The cost of both tiers is charged.
- A small tier slower than `small_tier_timeout_s` (or half the request's remaining deadline)
  is hedged: the large tier starts on the same request and the first good answer wins.
- When the large tier fails, a routed request is answered by the small tier only if the
  config allows degraded answers (flagged in the headers); otherwise the error stands.
- Pinned requests go to their tier and nowhere else: the client chose it.
- Each tier's circuit breaker counts its calls' failures (5xx other than a full queue) and
  successes. A call cancelled (client gone, deadline, lost hedge) or refused without a verdict
  counts as neither; a half-open trial that ends so frees the trial slot for the next request.
  A slow small call the hedge beat is therefore no failure of the small tier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

from serve_app.accounting.cost_model import TierPrice
from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import TIER_NAMES, QualityConfig, TierName
from serve_app.protocol.errors import (
    CascadeError,
    ContextLengthExceededError,
    OverloadedError,
    TierUnavailableError,
)
from serve_app.protocol.openai_api import (
    RequestKind,
    client_asked_for_logprobs,
    requested_max_tokens,
    with_internal_logprobs,
)
from serve_app.protocol.responses import Answer, answer_from_response, without_logprobs
from serve_app.protocol.stream_collector import (
    StreamCollector,
    chunk_token_logprobs,
    rebuildable_from_stream,
)
from serve_app.quality.checks import QualityGate
from serve_app.quality.circuit_breaker import CircuitBreaker
from serve_app.quality.early_stop import RunningConfidence
from serve_app.routing.text import routing_text
from serve_app.tiers.availability import NoRunningReplicaError, TierAvailability
from serve_app.tiers.client import TierClient, TierStream

logger = logging.getLogger("ray.serve")

_Result: TypeAlias = "tuple[dict[str, Any], Answer]"


@dataclass(frozen=True)
class _Escalation:
    """Why a small-tier attempt is escalated, and its weak answer if it produced one (kept
    for a degraded reply when the large tier then fails and `allow_degraded` is set)."""

    reason: str
    weak: _Result | None = None


# A small-tier attempt: the answer to return, or the escalation.
_Attempt: TypeAlias = "_Result | _Escalation"


def _is_tier_failure(error: CascadeError) -> bool:
    # 4xx means the request itself was refused; another tier would refuse it too (all but a
    # context-length refusal: see _small_error_escalation).
    return error.status_code >= 500


def _small_error_escalation(error: CascadeError, escalate_on_error: bool) -> str | None:
    """Why a small-tier error escalates to the large tier, or None when the error stands.

    A prompt too long for the small tier's context is the large tier's whatever
    `escalate_on_error` says: the ingress sends it there when its own count sees it, and this
    catches what the count missed (no tokenizer, a template rendered differently). It is no
    failure of the tier either, so its circuit breaker does not count it.
    """
    if isinstance(error, ContextLengthExceededError):
        return "context_length"
    if isinstance(error, NoRunningReplicaError):
        return "small_unavailable"  # like an open circuit: the small tier cannot answer at all
    if escalate_on_error and _is_tier_failure(error):
        return "error"
    return None


class TierFallback:
    def __init__(
        self,
        tiers: dict[TierName, TierClient],
        prices: dict[TierName, TierPrice],
        config: QualityConfig,
        context_lengths: Mapping[TierName, int | None] | None = None,
        availability: TierAvailability | None = None,
    ):
        """`context_lengths`: each tier's max_model_len, for the gate's truncation check.
        `availability`: which tiers have a running replica; a call to one without is refused
        or abandoned at once (Serve would hold it until a replica starts)."""
        self.tiers = tiers
        self.availability = availability
        self.prices = prices
        self.config = config
        self.gate = QualityGate(config, context_lengths)
        breaker = config.circuit_breaker
        self.breakers = {
            name: CircuitBreaker(breaker.failure_threshold, breaker.cooldown_s)
            for name in TIER_NAMES
        }

    async def answer(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        *,
        check_quality: bool = True,
    ) -> tuple[dict[str, Any], Answer]:
        """One complete (non-streamed) answer for the tier in `trace.tier`, with fallbacks.

        `check_quality=False` (a client's `x-cascade-quality: off`) skips the quality gate;
        errors of the small tier still fail over when the config says so.
        """
        if trace.pinned:
            return await self._ask(trace.tier, body, kind, trace)
        if trace.tier == "small":
            judged = check_quality and self.config.enabled
            return await self._ask_small_then_escalate(body, kind, trace, judged)
        return await self._ask_large_or_degrade(body, kind, trace)

    async def open_stream(
        self, body: dict[str, Any], kind: RequestKind, trace: RequestTrace
    ) -> TierStream:
        """A relayed stream from `trace.tier`; failures before the first token fall back."""
        tier = trace.tier
        try:
            with self._admitted(tier, pinned=trace.pinned):
                self._require_replica(tier)
                call = self.tiers[tier].open_stream(body, kind)
                stream = await self._guarded(tier, call, trace)
        except CascadeError as error:
            other = self._fallback_tier(tier, trace, error)
            if other is None:
                raise
            reason = _small_error_escalation(error, self.config.escalate_on_error)
            self._note_fallback(trace, tier, reason or "error")
            self._require_replica(other)
            stream = await self._guarded(other, self.tiers[other].open_stream(body, kind), trace)
        return stream

    async def _ask_small_then_escalate(
        self, body: dict[str, Any], kind: RequestKind, trace: RequestTrace, judged: bool
    ) -> tuple[dict[str, Any], Answer]:
        try:
            self._require_replica("small")
        except NoRunningReplicaError:
            return await self._escalate(body, kind, trace, _Escalation("small_unavailable"))
        permit = self.breakers["small"].admit()
        if permit is None:
            return await self._escalate(body, kind, trace, _Escalation("small_circuit_open"))
        small = asyncio.ensure_future(self._small_attempt(body, kind, trace, judged))
        try:
            done, _ = await asyncio.wait({small}, timeout=self._hedge_delay_s(trace))
            outcome = small.result() if done else await self._hedge(small, body, kind, trace)
        finally:
            small.cancel()  # a no-op once it is done; aborts its generation otherwise
            # A trial cancelled (or never started) before an outcome frees the trial slot.
            self.breakers["small"].release(permit)
        if isinstance(outcome, _Escalation):
            return await self._escalate(body, kind, trace, outcome)
        return outcome

    async def _small_attempt(
        self, body: dict[str, Any], kind: RequestKind, trace: RequestTrace, judged: bool
    ) -> _Attempt:
        """The small tier's answer if it is good enough, else the reason to escalate."""
        wants_logprobs = judged and self.gate.needs_logprobs
        internal = with_internal_logprobs(body, kind) if wants_logprobs else body
        try:
            generated = await self._generate_small(body, internal, kind, trace, judged)
        except CascadeError as error:
            reason = _small_error_escalation(error, self.config.escalate_on_error)
            if reason is None:
                raise
            logger.warning("small tier failed (%s); escalating (%s)", error.message, reason)
            return _Escalation(reason)
        if generated is None:
            return _Escalation("low_confidence_early")
        response, answer = generated
        if internal is not body and not client_asked_for_logprobs(body):
            response = without_logprobs(response)
        if judged:
            reason = await self.gate.judged_escalation_reason(
                routing_text(body, kind), answer, requested_max_tokens(body, kind)
            )
            if reason:
                return _Escalation(reason, (response, answer))
        return response, answer

    async def _generate_small(
        self,
        body: dict[str, Any],
        internal: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        judged: bool,
    ) -> _Result | None:
        """The small tier's whole answer to `internal`, or None when early escalation stopped
        it. Judged answers are watched as they are generated when the request's response can
        be rebuilt from a stream (`quality.early_escalation`); others are generated whole."""
        monitor = self._early_monitor(body, kind) if judged else None
        if monitor is None:
            return await self._ask("small", internal, kind, trace)
        watch = self._watch_small(internal, kind, trace, monitor)
        return await self._guarded("small", watch, trace)

    def _early_monitor(self, body: dict[str, Any], kind: RequestKind) -> RunningConfidence | None:
        early = self.config.early_escalation
        if not (early.enabled and self.gate.needs_logprobs and rebuildable_from_stream(body, kind)):
            return None
        return RunningConfidence(
            self.config.min_mean_logprob,
            self.config.min_token_logprob,
            min_tokens=early.min_tokens,
            window_tokens=early.window_tokens,
        )

    async def _watch_small(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        monitor: RunningConfidence,
    ) -> _Result | None:
        """Generate the small tier's answer as a stream, its confidence watched token by token.

        When the monitor says stop, the stream is cancelled, which aborts the generation in the
        engine; the small tier is charged the tokens it generated (the engine reports usage on
        every chunk) and None says escalate. A finished answer comes back as the non-streamed
        response the engine would have sent.
        """
        stream = await self.tiers["small"].open_stream(body, kind)
        collected = StreamCollector(kind)
        async with aclosing(stream.events()) as events:  # closing it cancels the generation
            async for _event, payload in events:
                if payload is None:
                    continue
                collected.observe(payload)
                if monitor.observe(chunk_token_logprobs(payload, kind)):
                    stream.cancel()
                    generated = max(collected.completion_tokens, monitor.tokens_seen)
                    logger.debug("small answer stopped early after %d tokens", generated)
                    price = self.prices["small"]
                    trace.cost.charge_tier("small", price, collected.prompt_tokens, generated)
                    return None
        response = collected.response()
        answer = answer_from_response(response, kind)
        trace.cost.charge_tier(
            "small", self.prices["small"], answer.prompt_tokens, answer.completion_tokens
        )
        return response, answer

    def _hedge_delay_s(self, trace: RequestTrace) -> float:
        """How long the small tier has alone: the configured timeout, or half the time left.

        Half, because the large tier needs at least as long for the same answer: a hedge that
        starts later can only end in a 504.
        """
        delay_s = self.config.small_tier_timeout_s
        if trace.deadline_s is not None:
            delay_s = min(delay_s, (trace.deadline_s - time.monotonic()) / 2)
        return max(delay_s, 0.0)

    async def _hedge(
        self,
        small: asyncio.Future[_Attempt],
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
    ) -> tuple[dict[str, Any], Answer]:
        """The small tier is slow: the large tier starts too, and the first good answer wins.

        The small call keeps running (cancelling it would throw away most of an answer that
        may be seconds from done); whichever tier loses is cancelled, which aborts its
        generation, and its prefill is charged. Slow is not broken: a small call cancelled
        because the large tier won counts as no failure of the small tier, or a few slow
        answers under load would open its circuit and send all traffic to the large tier.
        """
        trace.hedged = True
        large = asyncio.ensure_future(self._ask("large", body, kind, trace))
        try:
            await asyncio.wait({small, large}, return_when=asyncio.FIRST_COMPLETED)
            if large.done() and large.exception() is None:
                small.cancel()
                trace.escalate("timeout")
                response, answer = large.result()
                self._charge_if_unanswered("small", answer.prompt_tokens, trace)
                return response, answer
            # The small tier finished first, or the large one failed: the small one decides.
            outcome = await small
            if not isinstance(outcome, _Escalation):
                large.cancel()
                self._charge_if_unanswered("large", outcome[1].prompt_tokens, trace)
                return outcome
            return await self._escalate(body, kind, trace, outcome, large)
        finally:
            large.cancel()

    def _charge_if_unanswered(
        self, tier: TierName, prompt_tokens: int, trace: RequestTrace
    ) -> None:
        # Both tiers get the same prompt, so the winner's prompt tokens stand for the loser's.
        if not any(usage.tier == tier for usage in trace.cost.tiers):
            trace.cost.charge_abandoned(tier, self.prices[tier], prompt_tokens)

    async def _escalate(
        self,
        body: dict[str, Any],
        kind: RequestKind,
        trace: RequestTrace,
        escalation: _Escalation,
        large: asyncio.Future[_Result] | None = None,
    ) -> _Result:
        """The large tier's answer (`large`: a call already running, from a hedge).

        If the large tier fails and degraded answers are allowed, the small tier's weak
        answer, when there is one, beats an error.
        """
        trace.escalate(escalation.reason)
        try:
            return await (large if large is not None else self._ask("large", body, kind, trace))
        except CascadeError as error:
            if escalation.weak is None or not self._degraded_after(error, trace):
                raise
            return escalation.weak

    async def _ask_large_or_degrade(
        self, body: dict[str, Any], kind: RequestKind, trace: RequestTrace
    ) -> tuple[dict[str, Any], Answer]:
        try:
            with self._admitted("large"):
                return await self._ask("large", body, kind, trace)
        except CascadeError as error:
            if not self._degraded_after(error, trace):
                raise
            return await self._ask("small", body, kind, trace)

    @contextmanager
    def _admitted(self, tier: TierName, *, pinned: bool = False) -> Iterator[None]:
        """Around a call to `tier`: refuses it while the circuit is open (a pinned request
        skips the breaker: the client chose the tier), and hands a half-open trial's slot back
        when the call ends without an outcome (cancelled, or refused for load)."""
        if pinned:
            yield
            return
        breaker = self.breakers[tier]
        permit = breaker.admit()
        if permit is None:
            raise TierUnavailableError(f"The {tier} tier's circuit is open.")
        try:
            yield
        finally:
            breaker.release(permit)

    async def _ask(
        self, tier: TierName, body: dict[str, Any], kind: RequestKind, trace: RequestTrace
    ) -> tuple[dict[str, Any], Answer]:
        self._require_replica(tier)
        response = await self._guarded(tier, self.tiers[tier].complete(body, kind), trace)
        answer = answer_from_response(response, kind)
        trace.cost.charge_tier(
            tier, self.prices[tier], answer.prompt_tokens, answer.completion_tokens
        )
        return response, answer

    def _require_replica(self, tier: TierName) -> None:
        if self.availability is not None:
            self.availability.require(tier)

    async def _unless_tier_lost(self, tier: TierName, call: Any) -> Any:
        """`call`'s result, or NoRunningReplicaError as soon as the tier has no replica left."""
        if self.availability is None:
            return await call
        work = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self.availability.lost(tier))
        try:
            done, _ = await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not work.done():
                work.cancel()  # the tier was lost, or this request was cancelled
        if work not in done:
            raise self.availability.refusal(tier)
        return work.result()

    async def _guarded(self, tier: TierName, call: Any, trace: RequestTrace) -> Any:
        """Await a tier call, feeding its outcome to the tier's circuit breaker."""
        started_s = time.perf_counter()
        try:
            result = await self._unless_tier_lost(tier, call)
        except CascadeError as error:
            # A full queue is load, not a broken tier: it must not open the circuit.
            if _is_tier_failure(error) and not isinstance(error, OverloadedError):
                self.breakers[tier].record_failure()
            raise
        finally:
            trace.tier_wait_s += time.perf_counter() - started_s
        self.breakers[tier].record_success()
        return result

    def _fallback_tier(
        self, failed: TierName, trace: RequestTrace, error: CascadeError
    ) -> TierName | None:
        if trace.pinned:
            return None
        if failed == "small":
            escalation = _small_error_escalation(error, self.config.escalate_on_error)
            return "large" if escalation is not None else None
        if self.config.allow_degraded and _is_tier_failure(error):
            return "small"
        return None

    def _degraded_after(self, error: CascadeError, trace: RequestTrace) -> bool:
        """Whether the small tier may answer for a failed large-tier call; marks the trace."""
        if self._fallback_tier("large", trace, error) is None:
            return False
        logger.warning("large tier failed (%s); answering degraded", error.message)
        trace.degrade()
        return True

    def _note_fallback(self, trace: RequestTrace, failed: TierName, reason: str) -> None:
        if failed == "small":
            trace.escalate(reason)
        else:
            trace.degrade()
