"""A key's rate limits hold across ingress replicas: their budgets live in one real Redis.

Two limiters built from the same `rate_limit_store` config stand for two ingress replicas (on
the same or different nodes: the buckets are timed by the Redis server's clock). Rates are
tiny, so the few milliseconds a test takes refill nothing that matters; where a test waits for
a refill it waits in real time. With `{kind: local}` each replica keeps its own budget, and the
same scenarios admit twice a key's limit.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.requests import Request

from serve_app.accounting.metrics import IngressMetrics
from serve_app.config import (
    ApiKeyConfig,
    AuthConfig,
    CascadeConfig,
    LocalRateLimitStore,
    RedisRateLimitStore,
)
from serve_app.gateway.auth import RateLimiter, RateLimits, key_sha256
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.gateway.shared_limits import RedisRateLimiter, rate_limits_from_config
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import RateLimitError
from tests.helpers import ScriptedTier, chat_body, keyed_caller
from tests.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent
# A guard against a hang, far above every store timeout used here: the assertions are about
# whether a call returns, not how fast.
HANG_GUARD_S = 30.0
TIER_COST = {"gpu_usd_per_hour": 1.0, "decode_tokens_per_s": 100, "prefill_tokens_per_s": 1000}


@pytest.fixture
def store(redis_server: RedisServer) -> RedisRateLimitStore:
    """Redis as a fresh deployment finds it: no budgets left over from another test."""
    with redis_server.client() as client:
        client.flushall()
    return RedisRateLimitStore(kind="redis", url=redis_server.url, timeout_s=0.5)


async def _attempt(limiter: RateLimits, caller: Caller) -> RateLimitError | None:
    try:
        await limiter.admit(caller)
    except RateLimitError as refusal:
        return refusal
    return None


async def _close(*limiters: RateLimits) -> None:
    for limiter in limiters:
        if isinstance(limiter, RedisRateLimiter):
            await limiter.aclose()


def _retry_after_s(refusal: RateLimitError | None) -> int:
    assert refusal is not None and refusal.status_code == 429
    return int(refusal.headers["retry-after"])


def test_two_replicas_admit_a_keys_requests_per_minute_in_total(
    store: RedisRateLimitStore,
) -> None:
    alice = keyed_caller("alice", requests_per_minute=5)

    async def burst() -> list[RateLimitError | None]:
        replicas = [rate_limits_from_config(store), rate_limits_from_config(store)]
        # 20 requests at once, spread over both replicas: each check-and-take is atomic.
        outcomes = await asyncio.gather(*(_attempt(replicas[i % 2], alice) for i in range(20)))
        await _close(*replicas)
        return outcomes

    outcomes = asyncio.run(burst())
    refusals = [outcome for outcome in outcomes if outcome is not None]
    assert len(outcomes) - len(refusals) == 5  # the key's limit, not 5 per replica
    # One request refills in 60/5 s, whichever replica the client comes back to.
    assert {_retry_after_s(refusal) for refusal in refusals} <= {11, 12}


def test_a_client_that_waits_retry_after_is_admitted_on_any_replica(
    store: RedisRateLimitStore,
) -> None:
    alice = keyed_caller("alice", requests_per_minute=60)

    async def scenario() -> tuple[int, RateLimitError | None]:
        first, second = rate_limits_from_config(store), rate_limits_from_config(store)
        for _ in range(60):
            await first.admit(alice)
        refusal = await _attempt(second, alice)
        await asyncio.sleep(_retry_after_s(refusal))
        retried = await _attempt(second, alice)
        await _close(first, second)
        return _retry_after_s(refusal), retried

    retry_after_s, retried = asyncio.run(scenario())
    assert retry_after_s == 1  # 60 requests/min refill one a second
    assert retried is None


def test_tokens_used_on_one_replica_refuse_the_next_request_on_another(
    store: RedisRateLimitStore,
) -> None:
    alice = keyed_caller("alice", tokens_per_minute=600)

    async def scenario() -> RateLimitError | None:
        first, second = rate_limits_from_config(store), rate_limits_from_config(store)
        await first.admit(alice)
        await first.charge_tokens(alice, 900)  # the answer used more than the minute's budget
        refusal = await _attempt(second, alice)
        await _close(first, second)
        return refusal

    refusal = asyncio.run(scenario())
    # 600 tokens/min refill the 300-token debt plus one token in 30.1 s.
    assert 29 <= _retry_after_s(refusal) <= 31
    assert "600 tokens per minute" in refusal.message


def test_tenants_do_not_share_budgets(store: RedisRateLimitStore) -> None:
    alice = keyed_caller("alice", requests_per_minute=2)
    bob = keyed_caller("bob", requests_per_minute=2)
    unlimited = Caller("carol", ApiKeyConfig(sha256=key_sha256("carol"), tenant="carol"))

    async def scenario() -> dict[str, list[bool]]:
        first, second = rate_limits_from_config(store), rate_limits_from_config(store)
        admitted: dict[str, list[bool]] = {"alice": [], "bob": [], "carol": []}
        for caller, limiter in [(alice, first), (bob, second), (unlimited, first)]:
            for _ in range(3):
                admitted[caller.tenant].append(await _attempt(limiter, caller) is None)
        await _close(first, second)
        return admitted

    assert asyncio.run(scenario()) == {
        "alice": [True, True, False],
        "bob": [True, True, False],  # alice's exhausted budget is not bob's
        "carol": [True, True, True],  # a key without limits is never refused
    }


def test_idle_tenants_leave_nothing_in_redis(
    store: RedisRateLimitStore, redis_server: RedisServer
) -> None:
    alice = keyed_caller("alice", requests_per_minute=600, tokens_per_minute=6000)

    async def use_once() -> None:
        limiter = rate_limits_from_config(store)
        await limiter.admit(alice)
        await limiter.charge_tokens(alice, 30)
        await _close(limiter)

    asyncio.run(use_once())
    with redis_server.client() as client:
        keys = client.keys(f"{store.key_prefix}:*")
        assert len(keys) == 2  # one bucket per limit kind
        # Each expires when it would be full again: 0.1 s for one request at 600/min and
        # 0.3 s for 30 tokens at 6000/min (plus the ms the test took).
        assert all(0 < client.pttl(key) <= 300 for key in keys)
        deadline_s = time.monotonic() + HANG_GUARD_S
        while client.keys(f"{store.key_prefix}:*") and time.monotonic() < deadline_s:
            time.sleep(0.05)
        assert client.keys(f"{store.key_prefix}:*") == []


def test_replicas_fail_open_when_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    store = RedisRateLimitStore(kind="redis", url=server.url, timeout_s=0.5)
    alice = keyed_caller("alice", requests_per_minute=1)
    fail_opens: list[int] = []

    async def scenario() -> tuple[RateLimitError | None, list[RateLimitError | None]]:
        limiter = rate_limits_from_config(store, on_fail_open=lambda: fail_opens.append(1))
        await limiter.admit(alice)
        refused = await _attempt(limiter, alice)  # the shared budget is in force
        server.stop()
        during_outage = [
            await asyncio.wait_for(_attempt(limiter, alice), HANG_GUARD_S) for _ in range(5)
        ]
        await limiter.charge_tokens(alice, 100)  # a lost debit is logged, not raised
        await _close(limiter)
        return refused, during_outage

    try:
        refused, during_outage = asyncio.run(scenario())
    finally:
        server.stop()
    assert refused is not None
    assert during_outage == [None] * 5  # admitted: a Redis outage is not a cascade outage
    assert len(fail_opens) == 5


def test_a_hung_redis_does_not_hold_requests_and_limits_return_with_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    store = RedisRateLimitStore(kind="redis", url=server.url, timeout_s=0.2)
    alice = keyed_caller("alice", requests_per_minute=1)

    async def scenario() -> tuple[RateLimitError | None, RateLimitError | None]:
        limiter = rate_limits_from_config(store)
        await limiter.admit(alice)
        server.pause()
        # Without the store's timeout this waits on a socket that never answers.
        during_hang = await asyncio.wait_for(_attempt(limiter, alice), HANG_GUARD_S)
        server.resume()
        deadline_s = time.monotonic() + HANG_GUARD_S
        after = await _attempt(limiter, alice)
        while after is None and time.monotonic() < deadline_s:  # the store is retried
            await asyncio.sleep(0.1)
            after = await _attempt(limiter, alice)
        await _close(limiter)
        return during_hang, after

    try:
        during_hang, after = asyncio.run(scenario())
    finally:
        server.stop()
    assert during_hang is None  # admitted, not held
    assert _retry_after_s(after) >= 1  # Redis answers again: the key's budget applies


def test_a_keys_limits_hold_across_two_ingress_pipelines(store: RedisRateLimitStore) -> None:
    """The ingress path itself: 429 before any tier work, and the tokens an answer used,
    debited after the response by one replica, refuse the key's next request on the other."""
    keys = [
        {"sha256": key_sha256("alice-secret"), "tenant": "alice", "tokens_per_minute": 20},
        {"sha256": key_sha256("bob-secret"), "tenant": "bob", "requests_per_minute": 1},
    ]
    auth = {"mode": "api_keys", "keys": keys, "rate_limit_store": store.model_dump()}
    first, second = _pipeline(auth), _pipeline(auth)
    body = chat_body("What is the capital of France?", model="cascade-small")

    async def scenario() -> tuple[Any, RateLimitError | None, Any, RateLimitError | None]:
        answered = await first.handle(_request(body, "alice-secret"), "chat")
        await asyncio.gather(*first.charges)  # the debit, after the response
        alice_refused = await _refusal(second.handle(_request(body, "alice-secret"), "chat"))
        bob_answered = await second.handle(_request(body, "bob-secret"), "chat")
        bob_refused = await _refusal(first.handle(_request(body, "bob-secret"), "chat"))
        await _close(first.rate_limiter, second.rate_limiter)
        return answered, alice_refused, bob_answered, bob_refused

    answered, alice_refused, bob_answered, bob_refused = asyncio.run(scenario())
    assert answered.status_code == bob_answered.status_code == 200
    # ScriptedTier's answer used 26 tokens of alice's 20/min: 7 short, refilled in 21 s.
    assert 20 <= _retry_after_s(alice_refused) <= 21
    assert 59 <= _retry_after_s(bob_refused) <= 60


async def _refusal(response: Any) -> RateLimitError | None:
    try:
        await response
    except RateLimitError as refusal:
        return refusal
    return None


def _pipeline(auth: dict[str, Any]) -> RequestPipeline:
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
    return RequestPipeline(
        config,
        tiers={"small": ScriptedTier("cascade-small"), "large": ScriptedTier("cascade-large")},  # type: ignore[dict-item]
        router=None,  # type: ignore[arg-type]  # pinned requests are not routed
        cache=None,
        metrics=IngressMetrics.create(),
    )


def _request(body: dict[str, Any], api_key: str) -> Request:
    payload = json.dumps(body).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    headers = [(b"authorization", f"Bearer {api_key}".encode())]
    headers += [(b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    return Request({**scope, "query_string": b""}, receive)


# ---- configuration ---------------------------------------------------------------------------


def test_local_store_keeps_budgets_per_replica() -> None:
    assert isinstance(rate_limits_from_config(LocalRateLimitStore()), RateLimiter)
    assert AuthConfig().rate_limit_store.kind == "local"


def test_redis_store_needs_exactly_one_url_source() -> None:
    with pytest.raises(ValueError, match="exactly one of url, url_env"):
        AuthConfig.model_validate({"rate_limit_store": {"kind": "redis"}})
    with pytest.raises(ValueError, match="exactly one of url, url_env"):
        RedisRateLimitStore(kind="redis", url="redis://a", url_env="CASCADE_REDIS_URL")
    with pytest.raises(ValueError, match="url_env"):  # a local store has no url: a typo'd kind
        AuthConfig.model_validate({"rate_limit_store": {"kind": "local", "url_env": "X"}})


def test_an_unset_url_env_fails_the_replica_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_CASCADE_REDIS_URL", raising=False)
    store = RedisRateLimitStore(kind="redis", url_env="TEST_CASCADE_REDIS_URL")
    with pytest.raises(ValueError, match="TEST_CASCADE_REDIS_URL"):
        rate_limits_from_config(store)


def _auth_block(path: Path) -> dict[str, Any]:
    (app,) = yaml.safe_load(path.read_text())["applications"]
    return app["args"].get("auth", {})


def test_production_shares_budgets_through_redis_and_local_keeps_them_in_memory() -> None:
    production = AuthConfig.model_validate(_auth_block(REPO_ROOT / "configs" / "production.yaml"))
    local = AuthConfig.model_validate(_auth_block(REPO_ROOT / "configs" / "local.yaml"))
    assert isinstance(production.rate_limit_store, RedisRateLimitStore)
    assert production.rate_limit_store.url_env == "CASCADE_REDIS_URL"  # never the URL itself
    assert isinstance(local.rate_limit_store, LocalRateLimitStore)
