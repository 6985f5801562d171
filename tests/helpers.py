"""Request builders for the tests of the live stack, and a scripted LLM engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from serve_app.config import ApiKeyConfig
from serve_app.gateway.auth import key_sha256
from serve_app.protocol.caller import Caller
from serve_app.protocol.errors import TierUnavailableError

GOOD = "The capital of France is Paris, a city on the Seine known for its museums."

# Body fields that make the local tiers (SmolLM2) answer with nothing: their end-of-turn token
# `<|im_end|>` (id 2) is made certain, so the answer is empty, which the quality gate escalates.
# (A short max_tokens no longer does: an answer cut at the client's own limit is kept.)
EMPTY_ANSWER = {"logit_bias": {"2": 100}}


def chat_body(content: str, **overrides: Any) -> dict[str, Any]:
    """A deterministic, routed chat request with room for a complete short answer."""
    body = {
        "model": "cascade",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 160,
        "temperature": 0,
    }
    return {**body, **overrides}


class ScriptedTier:
    """An LLM tier that answers after `delay_s`, fails while `failing` is set (a dead replica),
    and counts the calls it got and the ones cancelled mid-generation.

    It stands in for the LLM engine only, where a test needs timing or failures a real engine
    cannot be told to produce; the fallback, gate and breakers under test are ours.
    """

    def __init__(self, model: str, *, delay_s: float = 0.0, text: str | None = GOOD) -> None:
        self.model = model
        self.delay_s = delay_s
        self.text = text
        self.finish_reason = "stop"
        self.tool_calls: list[dict[str, Any]] = []
        self.prompt_tokens = 10
        self.completion_tokens = 16
        self.failing = False
        self.calls = 0
        self.called_at: list[float] = []  # time.monotonic() of each call
        self.cancelled = 0

    async def complete(self, body: dict, kind: str) -> dict:
        self.calls += 1
        self.called_at.append(time.monotonic())
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failing:
            raise TierUnavailableError(f"Tier {self.model} is unavailable: replica died")
        message = {"role": "assistant", "content": self.text, "tool_calls": self.tool_calls}
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": usage,
        }


def wait_for_gateway(client: httpx.Client, name: str, timeout_s: float = 300) -> None:
    """Wait until a gateway of the test stack answers `/health` (the extra gateways start
    beside the open one, so they may come up after it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the {name} gateway never came up"
        time.sleep(1)


def keyed_caller(tenant: str, **key_fields: Any) -> Caller:
    """A caller with an API key of its own tenant, with the given limits or budgets."""
    return Caller(tenant, ApiKeyConfig(sha256=key_sha256(tenant), tenant=tenant, **key_fields))
