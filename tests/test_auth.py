"""API keys → tenants (401 otherwise) and per-key rate limits (429 with Retry-After)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serve_app.config import ApiKeyConfig, AuthConfig
from serve_app.gateway.auth import ANONYMOUS_TENANT, Authenticator, RateLimiter, key_sha256
from serve_app.protocol.errors import AuthenticationError, RateLimitError


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _keys_mode(**limits: int) -> AuthConfig:
    keys = [
        ApiKeyConfig(sha256=key_sha256("alice-secret"), tenant="alice", **limits),
        ApiKeyConfig(sha256=key_sha256("bob-secret"), tenant="bob"),
    ]
    return AuthConfig(mode="api_keys", keys=keys)


def test_open_mode_serves_everyone_but_keeps_keys_apart() -> None:
    auth = Authenticator(AuthConfig())
    assert auth.authenticate({}).tenant == ANONYMOUS_TENANT
    alice = auth.authenticate(_bearer("alice-secret"))
    bob = auth.authenticate(_bearer("bob-secret"))
    assert alice.tenant != bob.tenant
    assert "secret" not in alice.tenant  # the key itself is never the tenant id
    assert auth.authenticate(_bearer("alice-secret")).tenant == alice.tenant


def test_api_keys_mode_maps_keys_to_tenants() -> None:
    auth = Authenticator(_keys_mode())
    assert auth.authenticate(_bearer("alice-secret")).tenant == "alice"
    assert auth.authenticate(_bearer("bob-secret")).tenant == "bob"


@pytest.mark.parametrize("headers", [{}, _bearer(""), _bearer("mallory"), {"authorization": "x"}])
def test_missing_or_wrong_key_is_401(headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationError) as raised:
        Authenticator(_keys_mode()).authenticate(headers)
    assert raised.value.status_code == 401


def test_keys_can_come_from_a_file_named_by_an_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps([{"sha256": key_sha256("carol-secret"), "tenant": "carol"}]))
    monkeypatch.setenv("TEST_CASCADE_KEYS", str(keys_file))
    auth = Authenticator(AuthConfig(mode="api_keys", keys_file_env="TEST_CASCADE_KEYS"))
    assert auth.authenticate(_bearer("carol-secret")).tenant == "carol"


def test_config_rejects_a_plain_key_where_a_hash_belongs() -> None:
    with pytest.raises(ValueError, match="sha256"):
        ApiKeyConfig(sha256="alice-secret", tenant="alice")


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_request_rate_limit_answers_429_with_retry_after_then_recovers() -> None:
    auth, clock = Authenticator(_keys_mode(requests_per_minute=3)), FakeClock()
    limiter = RateLimiter(clock)
    alice, bob = (
        auth.authenticate(_bearer("alice-secret")),
        auth.authenticate(_bearer("bob-secret")),
    )
    for _ in range(3):
        asyncio.run(limiter.admit(alice))
    with pytest.raises(RateLimitError) as raised:
        asyncio.run(limiter.admit(alice))
    assert raised.value.status_code == 429
    assert int(raised.value.headers["retry-after"]) == 20  # one request refills in 60/3 s
    asyncio.run(limiter.admit(bob))  # other tenants are unaffected
    clock.now_s += 20
    asyncio.run(limiter.admit(alice))


def test_token_rate_limit_counts_tokens_after_the_fact() -> None:
    auth, clock = Authenticator(_keys_mode(tokens_per_minute=600)), FakeClock()
    limiter = RateLimiter(clock)
    alice = auth.authenticate(_bearer("alice-secret"))
    asyncio.run(limiter.admit(alice))
    asyncio.run(limiter.charge_tokens(alice, 900))
    with pytest.raises(RateLimitError):
        asyncio.run(limiter.admit(alice))
    clock.now_s += 31  # 600 tokens/min refill the 300-token debt plus one in 30.1 s
    asyncio.run(limiter.admit(alice))
