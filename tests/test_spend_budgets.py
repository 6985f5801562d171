"""An API key's dollar budget per UTC day or month: past it, 429 `budget_exceeded` until the
period ends, on every ingress replica.

Two budget stores built from the same `rate_limit_store` config stand for two ingress replicas;
their spend lives in one real Redis (tests/redis_server.py). Periods are moved by an injected
clock, never by sleeping; it stays near the real time, because Redis expires spend keys by its
own clock. The ingress path runs for real (RequestPipeline) with a scripted engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from serve_app.accounting.metrics import IngressMetrics
from serve_app.config import ApiKeyConfig, AuthConfig, CascadeConfig, RedisRateLimitStore
from serve_app.gateway.auth import Authenticator, key_sha256
from serve_app.gateway.budgets import LocalSpendBudgets, SpendBudgets
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.gateway.shared_budgets import (
    SPEND_EXPIRY_MARGIN_S,
    RedisSpendBudgets,
    spend_budgets_from_config,
)
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import BudgetExceededError, InvalidRequestError, openai_error_body
from serve_app.protocol.responses import StreamAccumulator
from serve_app.tiers.client import TierStream
from tests.helpers import ScriptedTier, chat_body, keyed_caller
from tests.redis_server import RedisServer

HANG_GUARD_S = 30.0  # far above every store timeout here: whether a call returns, not how fast
DAY_S = 86400
# A scripted answer (10 prompt + 16 completion tokens) at these prices costs $0.0000472222.
TIER_COST = {"gpu_usd_per_hour": 1.0, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}
ANSWER_USD = 10 / 1000 / 3600 + 16 / 100 / 3600


class Clock:
    """Unix seconds that a test moves by hand."""

    def __init__(self, now_s: float):
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def _utc(now_s: float) -> datetime:
    return datetime.fromtimestamp(now_s, UTC)


def _next_midnight_s(now_s: float) -> float:
    now = _utc(now_s)
    return (datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)).timestamp()


def _next_month_s(now_s: float) -> float:
    now = _utc(now_s)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


async def _refusal(budgets: SpendBudgets, caller: Caller) -> BudgetExceededError | None:
    try:
        await budgets.check(caller)
    except BudgetExceededError as refusal:
        return refusal
    return None


@pytest.fixture
def redis_store(redis_server: RedisServer) -> RedisRateLimitStore:
    """Redis as a fresh deployment finds it: no spend left over from another test."""
    with redis_server.client() as client:
        client.flushall()
    return RedisRateLimitStore(kind="redis", url=redis_server.url, timeout_s=0.5)


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["usd_per_day", "usd_per_month"])
@pytest.mark.parametrize("amount", [0, -1])
def test_a_budget_must_be_a_positive_amount(field: str, amount: float) -> None:
    with pytest.raises(ValidationError, match=field):
        ApiKeyConfig(sha256=key_sha256("k"), tenant="acme", **{field: amount})


def test_a_misspelt_budget_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="usd_per_days"):
        AuthConfig.model_validate(
            {"keys": [{"sha256": key_sha256("k"), "tenant": "acme", "usd_per_days": 5}]}
        )


def test_the_catch_all_tenant_label_cannot_be_a_configured_tenant() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        ApiKeyConfig(sha256=key_sha256("k"), tenant="other")


def test_budgets_can_come_from_the_keys_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys.json"
    entry = {"sha256": key_sha256("acme-secret"), "tenant": "acme", "usd_per_month": 250}
    keys_file.write_text(json.dumps([entry]))
    monkeypatch.setenv("TEST_CASCADE_KEYS", str(keys_file))
    auth = Authenticator(AuthConfig(mode="api_keys", keys_file_env="TEST_CASCADE_KEYS"))
    key = auth.authenticate({"authorization": "Bearer acme-secret"}).key
    assert key is not None and key.usd_per_month == 250 and key.usd_per_day is None


# ---- the refusal -----------------------------------------------------------------------------


def test_a_spent_daily_budget_refuses_until_midnight_utc_saying_so() -> None:
    midnight_s = _next_midnight_s(time.time())
    clock = Clock(midnight_s - 90)
    budgets = LocalSpendBudgets(clock)
    alice = keyed_caller("alice", usd_per_day=0.5)

    async def scenario() -> tuple[BudgetExceededError | None, ...]:
        await budgets.charge(alice, 0.3)
        under = await _refusal(budgets, alice)
        await budgets.charge(alice, 0.3)
        over = await _refusal(budgets, alice)
        clock.now_s = midnight_s  # a new day
        next_day = await _refusal(budgets, alice)
        return under, over, next_day

    under, over, next_day = asyncio.run(scenario())
    assert under is None
    assert over is not None and over.status_code == 429
    body = openai_error_body(over)["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["code"]) == ("insufficient_quota", "budget_exceeded")
    reset = _utc(midnight_s).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["message"] == (
        f"Daily budget of $0.50 for this API key is spent ($0.60 used today); it resets at {reset}."
    )
    assert over.headers["retry-after"] == "90"
    assert next_day is None


def test_a_spent_monthly_budget_outlasts_the_day_and_names_the_month() -> None:
    month_end_s = _next_month_s(time.time())
    clock = Clock(month_end_s - 2 * DAY_S)
    budgets = LocalSpendBudgets(clock)
    # Both budgets spent: only the month's end lets the key in again, so the month is named.
    alice = keyed_caller("alice", usd_per_day=0.000001, usd_per_month=0.000002)

    async def scenario() -> tuple[BudgetExceededError | None, ...]:
        await budgets.charge(alice, 0.0000025)
        both_spent = await _refusal(budgets, alice)
        clock.now_s += DAY_S  # the next day: the daily budget is fresh, the month's is not
        next_day = await _refusal(budgets, alice)
        clock.now_s = month_end_s
        next_month = await _refusal(budgets, alice)
        return both_spent, next_day, next_month

    both_spent, next_day, next_month = asyncio.run(scenario())
    assert both_spent is not None and both_spent.message.startswith(
        "Monthly budget of $0.000002 for this API key is spent ($0.0000025 used this month)"
    )
    assert int(both_spent.headers["retry-after"]) == 2 * DAY_S
    assert next_day is not None and next_day.message.startswith("Monthly budget")
    assert int(next_day.headers["retry-after"]) == DAY_S
    assert next_month is None


def test_keys_without_budgets_are_never_refused_and_tenants_spend_apart() -> None:
    budgets = LocalSpendBudgets()
    alice, bob = keyed_caller("alice", usd_per_day=1.0), keyed_caller("bob", usd_per_day=1.0)
    unlimited = keyed_caller("carol")

    async def scenario() -> list[BudgetExceededError | None]:
        await budgets.charge(alice, 5.0)
        await budgets.charge(unlimited, 5.0)
        return [await _refusal(budgets, caller) for caller in (alice, bob, unlimited)]

    alice_refused, bob_refused, carol_refused = asyncio.run(scenario())
    assert alice_refused is not None
    assert bob_refused is None and carol_refused is None


# ---- shared by replicas through Redis --------------------------------------------------------


def test_two_replicas_spend_one_budget(redis_store: RedisRateLimitStore) -> None:
    alice = keyed_caller("alice", usd_per_day=1.0)

    async def scenario() -> tuple[BudgetExceededError | None, ...]:
        first, second = (spend_budgets_from_config(redis_store) for _ in range(2))
        # 9 debits of $0.1 at once over both replicas: none is lost.
        await asyncio.gather(*(replica.charge(alice, 0.1) for replica in [first, second] * 4))
        await first.charge(alice, 0.1)
        under = await _refusal(second, alice)
        await first.charge(alice, 0.1)  # $1.00: spent
        on_second = await _refusal(second, alice)
        on_first = await _refusal(first, alice)
        await _close(first, second)
        return under, on_second, on_first

    under, on_second, on_first = asyncio.run(scenario())
    assert under is None
    assert on_second is not None and on_first is not None
    assert "($1.00 used today)" in on_second.message


def test_shared_spend_starts_afresh_each_period(redis_store: RedisRateLimitStore) -> None:
    midnight_s = _next_midnight_s(time.time())
    clock = Clock(midnight_s - 10)
    alice = keyed_caller("alice", usd_per_day=1.0, usd_per_month=100.0)

    async def scenario() -> tuple[BudgetExceededError | None, ...]:
        first = spend_budgets_from_config(redis_store, clock=clock)
        second = spend_budgets_from_config(redis_store, clock=clock)
        await first.charge(alice, 1.5)
        before_midnight = await _refusal(second, alice)
        clock.now_s = midnight_s
        after_midnight = await _refusal(second, alice)
        await _close(first, second)
        return before_midnight, after_midnight

    before_midnight, after_midnight = asyncio.run(scenario())
    assert before_midnight is not None and int(before_midnight.headers["retry-after"]) == 10
    assert after_midnight is None


def test_spend_keys_expire_an_hour_after_their_period(
    redis_store: RedisRateLimitStore, redis_server: RedisServer
) -> None:
    now_s = time.time()
    alice = keyed_caller("alice", usd_per_day=1.0, usd_per_month=10.0)

    async def spend() -> None:
        budgets = spend_budgets_from_config(redis_store, clock=Clock(now_s))
        await budgets.charge(alice, 0.25)
        await _close(budgets)

    asyncio.run(spend())
    with redis_server.client() as client:
        keys = client.keys(f"{redis_store.key_prefix}:*")
        expiries = {key.split(":spend:")[1].split(":")[0]: client.expiretime(key) for key in keys}
        spent = {float(client.get(key)) for key in keys}
    assert expiries == {
        "daily": int(_next_midnight_s(now_s)) + SPEND_EXPIRY_MARGIN_S,
        "monthly": int(_next_month_s(now_s)) + SPEND_EXPIRY_MARGIN_S,
    }
    assert spent == {0.25}


def test_budgets_fail_open_when_redis_is_down_or_hung(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    store = RedisRateLimitStore(kind="redis", url=server.url, timeout_s=0.2)
    alice = keyed_caller("alice", usd_per_day=0.000001)
    fail_opens: list[int] = []

    async def scenario() -> tuple[BudgetExceededError | None, list[BudgetExceededError | None]]:
        budgets = spend_budgets_from_config(store, on_fail_open=lambda: fail_opens.append(1))
        await budgets.charge(alice, 1.0)
        refused = await _refusal(budgets, alice)  # the shared budget is in force
        server.pause()
        # Without the store's timeout this waits on a socket that never answers.
        hung = await asyncio.wait_for(_refusal(budgets, alice), HANG_GUARD_S)
        server.stop()
        down = [await asyncio.wait_for(_refusal(budgets, alice), HANG_GUARD_S) for _ in range(3)]
        await budgets.charge(alice, 1.0)  # a lost debit is logged, not raised
        await _close(budgets)
        return refused, [hung, *down]

    try:
        refused, during_outage = asyncio.run(scenario())
    finally:
        server.stop()
    assert refused is not None
    assert during_outage == [None] * 4  # admitted: a Redis outage is not a cascade outage
    assert len(fail_opens) == 4


async def _close(*budgets: SpendBudgets) -> None:
    for store in budgets:
        if isinstance(store, RedisSpendBudgets):
            await store.aclose()


# ---- the ingress path ------------------------------------------------------------------------


def _pipeline(auth: dict[str, Any], small: ScriptedTier | None = None) -> RequestPipeline:
    tier = {"model_source": "stand-in", "accelerator": "cpu", "cost": TIER_COST}
    config = CascadeConfig.model_validate(
        {
            "auth": auth,
            "tiers": {
                "small": {"model_id": "cascade-small", **tier},
                "large": {"model_id": "cascade-large", **tier},
            },
        }
    )
    small = small or ScriptedTier("cascade-small")
    tiers = {"small": small, "large": ScriptedTier("cascade-large")}
    return RequestPipeline(
        config,
        tiers=tiers,  # type: ignore[arg-type]
        router=None,  # type: ignore[arg-type]  # pinned requests are not routed
        cache=None,
        metrics=IngressMetrics.create(),
    )


def _request(body: dict[str, Any], api_key: str | None) -> Request:
    payload = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    headers = [(b"content-type", b"application/json")]
    if api_key is not None:
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    return Request({**scope, "query_string": b""}, receive)


async def _answer(pipeline: RequestPipeline, body: dict[str, Any], api_key: str) -> Any:
    try:
        return await pipeline.handle(_request(body, api_key), "chat")
    except BudgetExceededError as refusal:
        return refusal


def _keys_auth(store: RedisRateLimitStore) -> dict[str, Any]:
    keys = [
        {"sha256": key_sha256("alice-secret"), "tenant": "alice", "usd_per_day": 0.00001},
        {"sha256": key_sha256("bob-secret"), "tenant": "bob", "usd_per_day": 1.0},
    ]
    return {"mode": "api_keys", "keys": keys, "rate_limit_store": store.model_dump()}


QUESTION = chat_body("What is the capital of France?", model="cascade-small")


def test_a_spent_budget_refuses_the_key_on_every_ingress_replica_and_serves_others(
    redis_store: RedisRateLimitStore,
) -> None:
    """An answer's cost, debited after the response by one replica, spends alice's budget
    ($0.00001 < one answer) on the other replica too; bob's key is still served."""
    first, second = _pipeline(_keys_auth(redis_store)), _pipeline(_keys_auth(redis_store))

    async def scenario() -> list[Any]:
        answered = await _answer(first, QUESTION, "alice-secret")
        await asyncio.gather(*first.charges)  # the debit, after the response
        outcomes = [
            answered,
            await _answer(second, QUESTION, "alice-secret"),
            await _answer(first, QUESTION, "alice-secret"),
            await _answer(second, QUESTION, "bob-secret"),
        ]
        await _close(first.budgets, second.budgets)
        return outcomes

    answered, refused_on_second, refused_on_first, bob = asyncio.run(scenario())
    assert answered.status_code == 200
    assert float(answered.headers["x-cascade-cost-usd"]) == pytest.approx(ANSWER_USD)
    for refusal in (refused_on_second, refused_on_first):
        assert isinstance(refusal, BudgetExceededError)
        assert refusal.message.startswith(
            "Daily budget of $0.00001 for this API key is spent ($0.0000472222 used today)"
        )
    assert bob.status_code == 200


class _EndlessStreamTier(ScriptedTier):
    """A tier whose streamed answer goes on until the client leaves: a token per chunk, each
    chunk carrying the usage so far, as vLLM's do."""

    def __init__(self) -> None:
        super().__init__("cascade-small")
        self.generated = 0

        self.cancelled = False

    async def open_stream(self, body: dict, kind: str) -> TierStream:
        return TierStream(self.chunk(), self, StreamAccumulator("chat", self.model))

    def chunk(self) -> str:
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.generated}
        choice = {"index": 0, "delta": {"content": " w"}, "finish_reason": None}
        payload = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
        return f"data: {json.dumps({**payload, 'usage': usage})}\n\n"

    # The rest of the stream, cancellable as Ray's DeploymentResponseGenerator.
    def __aiter__(self) -> _EndlessStreamTier:
        return self

    async def __anext__(self) -> str:
        if self.cancelled:
            raise StopAsyncIteration
        await asyncio.sleep(0.001)
        self.generated += 1
        return self.chunk()

    def cancel(self) -> None:
        self.cancelled = True


async def _read_then_leave(response: Any, events: int) -> None:
    """Read `events` events of a streamed body, then go away as a client does: the task
    relaying the body is cancelled (as Starlette does when the connection drops)."""
    received = 0

    async def read() -> None:
        nonlocal received
        async for _ in response.body_iterator:
            received += 1

    reader = asyncio.ensure_future(read())
    while received < events:
        await asyncio.sleep(0.001)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


def test_a_stream_cut_by_the_client_is_debited_from_the_budget(
    redis_store: RedisRateLimitStore, redis_server: RedisServer
) -> None:
    tier = _EndlessStreamTier()
    pipeline = _pipeline(_keys_auth(redis_store), small=tier)
    body = {**QUESTION, "stream": True}

    async def scenario() -> Any:
        response = await pipeline.handle(_request(body, "alice-secret"), "chat")
        # 5 tokens and the prompt cost $0.0000167, past alice's $0.00001.
        await _read_then_leave(response, events=6)
        await asyncio.gather(*pipeline.charges)
        refused = await _answer(pipeline, QUESTION, "alice-secret")
        await _close(pipeline.budgets)
        return refused

    refused = asyncio.run(scenario())
    assert tier.generated >= 5 and tier.cancelled  # the client left mid-answer
    assert isinstance(refused, BudgetExceededError)
    spent_usd = pipeline.cost_summary("alice")["spent_usd"]
    assert isinstance(spent_usd, float) and spent_usd > 0.00001
    with redis_server.client() as client:
        (spend_key,) = client.keys(f"{redis_store.key_prefix}:{{alice}}:spend:daily:*")
        assert float(client.get(spend_key)) == pytest.approx(spent_usd)


def test_the_cost_summary_is_kept_per_tenant_label() -> None:
    keys = [{"sha256": key_sha256("alice-secret"), "tenant": "alice"}]
    pipeline = _pipeline({"mode": "api_keys", "keys": keys})
    open_pipeline = _pipeline({"mode": "open", "keys": keys})

    async def scenario() -> None:
        await pipeline.handle(_request(QUESTION, "alice-secret"), "chat")
        # Open mode: every caller is its own tenant, but all of them are `other` in the books.
        for api_key in ("alice-secret", "someone", None):
            await open_pipeline.handle(_request(QUESTION, api_key), "chat")

    asyncio.run(scenario())
    assert pipeline.cost_summary("alice")["requests"] == 1
    assert pipeline.cost_summary("other")["requests"] == 0
    assert pipeline.cost_summary()["spent_usd"] == pytest.approx(ANSWER_USD)
    assert open_pipeline.cost_summary("other")["requests"] == 3
    assert open_pipeline.cost_summary("alice")["requests"] == 0
    with pytest.raises(InvalidRequestError, match="known: alice, other") as unknown:
        pipeline.cost_summary("alicee")
    assert unknown.value.param == "tenant"
