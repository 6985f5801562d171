"""A fake LLM backend for the gateway comparison: canned tokens at a fixed pace, no model.

Gateways publish their overhead against such a backend (LiteLLM's fake OpenAI endpoint,
TensorZero's mock provider): it answers at a known pace, so whatever a client sees beyond that
pace is the gateway's. One pacing generator (`Pace.chunks`) serves two ways:

- `python -m benchmarks.gateway_fake_backend --port 9100`: an OpenAI-compatible HTTP server
  (`/v1/chat/completions`, `/v1/completions`, streamed and not). LiteLLM's proxy forwards to
  it, and the benchmark measures it alone as the baseline.
- `FakeLLMServer`: a Serve deployment with the `chat` / `completions` methods of Ray Serve
  LLM's `LLMServer`, returning what it returns (a `ChatCompletionResponse` /
  `CompletionResponse`, or lists of `data: {...}` SSE strings ending with `[DONE]`). The
  cascade calls its tiers through deployment handles, never over HTTP, so `build_app` binds
  the real ingress, cache and router (`serve_app.builder.bind_cascade`) in front of two of
  these instead of vLLM. Each list holds one chunk, as LLMServer yields with
  `stream_batching_interval_ms: 0`: the pace reaches the gateway unbatched, as it reaches
  LiteLLM from the HTTP server.

Every answer is the same canned text (cut at the request's max_tokens), with logprobs when
asked: the quality gate of configs/local.yaml judges it confident, so nothing escalates.
Benchmark-only: the product never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.config import TIER_NAMES, CascadeConfig, tier_deployment_name

CANNED_WORDS = (
    "The", " fake", " backend", " streams", " these", " canned", " words", " at",
    " a", " fixed", " pace", " so", " gateways", " can", " be", " compared", ".",
)  # fmt: skip
TOKEN_LOGPROB = -0.05
"""Every canned token's logprob: well above the quality gate's -0.58, so no escalation."""
PROMPT_TOKENS = 16


@dataclass(frozen=True)
class Pace:
    """How the fake answers: the first token after `first_token_s`, then one token every
    `token_interval_s`, at most `max_tokens` tokens of CANNED_WORDS."""

    first_token_s: float = 0.02
    token_interval_s: float = 0.01
    max_tokens: int = 8

    def tokens(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The tokens of this request's answer and its finish reason."""
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or self.max_tokens
        count = min(int(limit), self.max_tokens, len(CANNED_WORDS))
        return list(CANNED_WORDS[:count]), "length" if count < self.max_tokens else "stop"

    def answer_s(self, tokens: int) -> float:
        return self.first_token_s + self.token_interval_s * max(tokens - 1, 0)

    async def chunks(self, body: dict[str, Any], chat: bool) -> AsyncIterator[dict[str, Any]]:
        """The OpenAI stream chunks of one answer, paced; usage on every chunk when asked
        (vLLM's continuous_usage_stats, which the cascade asks for) or on a last chunk."""
        tokens, finish = self.tokens(body)
        head = _head(body, chat, stream=True)
        options = body.get("stream_options") or {}
        continuous = bool(options.get("continuous_usage_stats"))
        wants_logprobs = body.get("logprobs") not in (None, False)
        if chat:
            yield {**head, "choices": [_chat_delta({"role": "assistant", "content": ""})]}
        started = time.perf_counter()
        for index, token in enumerate(tokens):
            await _sleep_until(started + self.first_token_s + index * self.token_interval_s)
            last = index == len(tokens) - 1
            choice = _chat_delta({"content": token}) if chat else _text_piece(token)
            if wants_logprobs:
                choice["logprobs"] = _logprobs([token], chat)
            choice["finish_reason"] = finish if last else None
            chunk = {**head, "choices": [choice]}
            if continuous:
                chunk["usage"] = _usage(index + 1)
            yield chunk
        if options.get("include_usage"):
            yield {**head, "choices": [], "usage": _usage(len(tokens))}

    async def response(self, body: dict[str, Any], chat: bool) -> dict[str, Any]:
        """The non-streamed response, after the whole answer's time."""
        tokens, finish = self.tokens(body)
        await asyncio.sleep(self.answer_s(len(tokens)))
        text = "".join(tokens)
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice["logprobs"] = (
            _logprobs(tokens, chat) if body.get("logprobs") not in (None, False) else None
        )
        choice["finish_reason"] = finish
        return {
            **_head(body, chat, stream=False),
            "choices": [choice],
            "usage": _usage(len(tokens)),
        }


def canned_text(max_tokens: int) -> str:
    """The text every fake answer to a request with this max_tokens holds."""
    return "".join(CANNED_WORDS[:max_tokens])


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def _head(body: dict[str, Any], chat: bool, *, stream: bool) -> dict[str, Any]:
    kind = ("chat.completion" if chat else "text_completion") + (
        ".chunk" if stream and chat else ""
    )
    prefix = "chatcmpl" if chat else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": body.get("model", "fake"),
    }


def _chat_delta(delta: dict[str, Any]) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def _text_piece(text: str) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": None}


def _logprobs(tokens: list[str], chat: bool) -> dict[str, Any]:
    if chat:
        entries = [
            {"token": t, "logprob": TOKEN_LOGPROB, "bytes": list(t.encode()), "top_logprobs": []}
            for t in tokens
        ]
        return {"content": entries}
    return {
        "tokens": tokens,
        "token_logprobs": [TOKEN_LOGPROB] * len(tokens),
        "text_offset": [0] * len(tokens),
        "top_logprobs": [None] * len(tokens),
    }


def _usage(completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def pin_process_to(cpus: Sequence[int]) -> None:
    """Pin every thread of this process (and so every thread it starts later) to `cpus`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), set(cpus))
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


# ---- the HTTP server ----------------------------------------------------------------------


def make_http_app(pace: Pace) -> FastAPI:
    """The OpenAI-compatible FastAPI app over `pace`."""
    app = FastAPI(title="fake OpenAI backend")

    async def answer(request: Request, chat: bool) -> Any:
        body = await request.json()
        if not body.get("stream"):
            return JSONResponse(await pace.response(body, chat))

        async def events() -> AsyncIterator[str]:
            async for chunk in pace.chunks(body, chat):
                yield _sse(chunk)
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await answer(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await answer(request, chat=False)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


# ---- the Serve deployment and the graph ---------------------------------------------------


class FakeLLMServer:
    """Answers the ingress's tier calls as Ray Serve LLM's LLMServer does, from `Pace`."""

    def __init__(self, pace: dict[str, Any], cpus: Sequence[int] | None = None):
        if cpus:
            pin_process_to(cpus)  # the backend must not compete with the gateway's core
        self.pace = Pace(**pace)

    async def chat(self, request: Any) -> AsyncIterator[Any]:
        from ray.serve.llm.openai_api_models import ChatCompletionResponse

        async for item in self._answer(request, chat=True, response_cls=ChatCompletionResponse):
            yield item

    async def completions(self, request: Any) -> AsyncIterator[Any]:
        from ray.serve.llm.openai_api_models import CompletionResponse

        async for item in self._answer(request, chat=False, response_cls=CompletionResponse):
            yield item

    async def _answer(self, request: Any, *, chat: bool, response_cls: Any) -> AsyncIterator[Any]:
        body = request.model_dump(exclude_none=True)
        if not request.stream:
            yield response_cls.model_validate(await self.pace.response(body, chat))
            return
        async for chunk in self.pace.chunks(body, chat):
            yield [_sse(chunk)]
        yield ["data: [DONE]\n\n"]


# The fake tiers are not what is measured: no admission limit of theirs may refuse a request.
FAKE_TIER_MAX_ONGOING_REQUESTS = 10_000


def build_app(args: dict[str, Any]) -> Any:
    """Serve builder: `{cascade: <builder args>, pace: {...}, backend_cpus: [1]}` binds the
    cascade exactly as serve_app.builder does, with FakeLLMServer as both tiers."""
    from ray import serve

    from serve_app.builder import bind_cascade

    config = CascadeConfig.model_validate(args["cascade"])
    pace = asdict(Pace(**args.get("pace", {})))
    tiers = {
        name: serve.deployment(
            FakeLLMServer,
            name=tier_deployment_name(name),
            max_ongoing_requests=FAKE_TIER_MAX_ONGOING_REQUESTS,
            ray_actor_options={"num_cpus": 0.1},
        ).bind(pace, args.get("backend_cpus"))
        for name in TIER_NAMES
    }
    return bind_cascade(config, small=tiers["small"], large=tiers["large"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_fake_backend", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--first-token-ms", type=float, default=1000 * Pace.first_token_s)
    parser.add_argument("--token-interval-ms", type=float, default=1000 * Pace.token_interval_s)
    parser.add_argument("--max-tokens", type=int, default=Pace.max_tokens)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = build_parser().parse_args(argv)
    pace = Pace(args.first_token_ms / 1000, args.token_interval_ms / 1000, args.max_tokens)
    uvicorn.run(make_http_app(pace), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
