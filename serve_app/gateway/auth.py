"""API keys → tenants, and per-tenant rate limits.

Keys are stored as SHA-256 hashes only, and a presented key is compared against every stored
hash in constant time, so neither the config nor the timing of a refusal reveals a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from serve_app.config import ApiKeyConfig, AuthConfig
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import AuthenticationError, RateLimitError

ANONYMOUS_TENANT = "anonymous"


def key_sha256(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def bearer_key(headers: Any) -> str:
    return headers.get("authorization", "").removeprefix("Bearer ").strip()


def _keys_from_file(env_name: str | None) -> list[ApiKeyConfig]:
    """Keys kept out of the Serve config: a JSON list in the file an env var names."""
    path = os.environ.get(env_name or "", "")
    if not path:
        return []
    return [ApiKeyConfig.model_validate(entry) for entry in json.loads(Path(path).read_text())]


class Authenticator:
    def __init__(self, config: AuthConfig):
        self.config = config
        self.keys = [*config.keys, *_keys_from_file(config.keys_file_env)]

    def authenticate(self, headers: Any) -> Caller:
        presented = bearer_key(headers)
        if self.config.mode == "open":
            # Open mode still keeps callers apart in the cache: each key is its own tenant.
            return Caller(key_sha256(presented)[:32] if presented else ANONYMOUS_TENANT, None)
        if not presented:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
        digest = key_sha256(presented).encode()
        match = None
        for key in self.keys:  # no early exit: every refusal takes the same time
            if hmac.compare_digest(digest, key.sha256.encode()):
                match = key
        if match is None:
            raise AuthenticationError("Invalid API key.", code="invalid_api_key")
        return Caller(match.tenant, match)


class RateLimits(Protocol):
    """Per-tenant request and token budgets of the API keys that set limits.

    `admit` checks both budgets and takes one request before any work is done; the tokens a
    request used are known only after it ran, so `charge_tokens` debits them then, and the
    caller's next request waits until the debt is refilled.
    """

    async def admit(self, caller: Caller) -> None:
        """Take one request from the caller's budget, or raise RateLimitError (429)."""
        ...

    async def charge_tokens(self, caller: Caller, tokens: int) -> None:
        """Debit the tokens a finished request used."""
        ...


def caller_limits(caller: Caller) -> list[tuple[str, int]]:
    """The caller's (kind, per-minute rate) budgets, tokens first: the order they are checked."""
    key = caller.key
    if key is None:
        return []
    limits = [("tokens", key.tokens_per_minute), ("requests", key.requests_per_minute)]
    return [(kind, rate) for kind, rate in limits if rate is not None]


def rate_limit_refusal(kind: str, rate: int, wait_s: float) -> RateLimitError:
    return RateLimitError(
        f"Rate limit of {rate} {kind} per minute reached for this API key.",
        retry_after_s=wait_s,
    )


class TokenBucket:
    """`rate_per_minute` units refilled continuously, at most one minute's worth banked."""

    def __init__(self, rate_per_minute: float, clock: Callable[[], float]):
        self.capacity = rate_per_minute
        self.rate_per_s = rate_per_minute / 60
        self.level = rate_per_minute
        self.clock = clock
        self.updated_s = clock()

    def _refill(self) -> None:
        now_s = self.clock()
        self.level = min(self.capacity, self.level + (now_s - self.updated_s) * self.rate_per_s)
        self.updated_s = now_s

    def seconds_until_available(self) -> float:
        self._refill()
        return 0.0 if self.level >= 1 else (1 - self.level) / self.rate_per_s

    def take(self, amount: float) -> None:
        self._refill()
        self.level -= amount


class RateLimiter:
    """`RateLimits` in this ingress replica's memory (`rate_limit_store: {kind: local}`).

    With N ingress replicas each enforces the full limit, so a tenant may get up to N times it;
    several replicas share budgets through Redis instead (gateway/shared_limits.py).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, tenant: str, kind: str, rate: int) -> TokenBucket:
        bucket = self.buckets.get((tenant, kind))
        if bucket is None:
            bucket = self.buckets[(tenant, kind)] = TokenBucket(rate, self.clock)
        return bucket

    async def admit(self, caller: Caller) -> None:
        limits = caller_limits(caller)
        for kind, rate in limits:
            wait_s = self._bucket(caller.tenant, kind, rate).seconds_until_available()
            if wait_s > 0:
                raise rate_limit_refusal(kind, rate, wait_s)
        for kind, rate in limits:
            if kind == "requests":
                self._bucket(caller.tenant, kind, rate).take(1)

    async def charge_tokens(self, caller: Caller, tokens: int) -> None:
        if caller.key is not None and caller.key.tokens_per_minute is not None and tokens:
            self._bucket(caller.tenant, "tokens", caller.key.tokens_per_minute).take(tokens)
