"""Calls into one LLM tier's `LLMServer` deployment, with engine errors mapped to ours."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serve_app.protocol.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    OverloadedError,
    TierUnavailableError,
    UpstreamError,
)
from serve_app.protocol.openai_api import RequestKind, engine_body
from serve_app.protocol.responses import (
    Answer,
    StreamAccumulator,
    parse_sse_event,
    sse_event,
    without_engine_nulls,
)

logger = logging.getLogger("ray.serve")

# Failures of the tier itself (dead replica, overload), as opposed to a rejected request.
_TIER_FAILURES = (RayActorError, RayTaskError, BackPressureError, DeploymentUnavailableError)


def _engine_request(body: dict[str, Any], kind: RequestKind, *, model: str, stream: bool) -> Any:
    # Imported on first use: the request models pull in vLLM, which the gateway's other
    # modules (and offline tools importing them) do not need.
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
    from vllm.exceptions import VLLMClientError

    request_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
    try:
        return request_cls(**engine_body(body, model=model, stream=stream))
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequestError(
            f"Invalid value for '{param}': {first['msg']}", param=param
        ) from e
    except VLLMClientError as e:
        # vLLM's own checks of a request (e.g. response_format json_schema without a schema)
        # are not pydantic errors; they are still the client's mistake: a 400, not a 500.
        message = str(e.args[0]) if e.args else str(e)
        raise InvalidRequestError(message, param=getattr(e, "parameter", None)) from e


def _tier_failure(model_id: str, error: BaseException) -> TierUnavailableError:
    if isinstance(error, BackPressureError):
        return OverloadedError(
            f"Tier {model_id} is at capacity; retry later.", retry_after_s=error.retry_after_s
        )
    return TierUnavailableError(f"Tier {model_id} is unavailable: {error}")


# How vLLM 0.29 refuses a request its context cannot hold (a 400): the prompt with the
# requested answer (renderers/params.py, entrypoints/serve/utils/api_utils.py), a max_tokens
# beyond max_model_len, or no room left for a single token (SamplingParams: the ingress refuses
# a client's own max_tokens below 1, so at the engine this means a full context).
_CONTEXT_REFUSAL = re.compile(
    r"maximum context length"
    r"|cannot be greater than max_model_len"
    r"|max_tokens must be at least 1, got 0"
)


def _raise_if_error(item: Any) -> None:
    error = getattr(item, "error", None)
    if error is None or not hasattr(item, "model_dump"):
        return
    status = int(getattr(error, "code", 500) or 500)
    error_type = getattr(error, "type", "server_error") or "server_error"
    message = str(getattr(error, "message", error))
    if status == 400 and _CONTEXT_REFUSAL.search(message):
        # Another tier's longer context may hold it: the fallback tells it from other 400s.
        raise ContextLengthExceededError(message)
    raise UpstreamError(message, status_code=status, error_type=error_type)


def _split_events(item: Any) -> list[str]:
    """Ray Serve LLM batches stream chunks; flatten them into single SSE events."""
    items = item if isinstance(item, list) else [item]
    events: list[str] = []
    for piece in items:
        _raise_if_error(piece)
        text = piece if isinstance(piece, str) else f"data: {piece.model_dump_json()}\n\n"
        events.extend(f"{event}\n\n" for event in text.split("\n\n") if event.strip())
    return events


class TierStream:
    """An opened engine stream: the first chunk has already arrived (errors surfaced early)."""

    def __init__(self, first: Any, rest: AsyncIterator[Any], accumulator: StreamAccumulator):
        self._first = first
        self._rest = rest
        self._accumulator = accumulator

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        """Each SSE event (vLLM's null extensions dropped) with its decoded payload."""
        try:
            for event in _split_events(self._first):
                yield self._observe(event)
            async for item in self._rest:
                for event in _split_events(item):
                    yield self._observe(event)
        except _TIER_FAILURES as e:
            # The replica died mid-answer: a tier failure the fallback can act on.
            raise _tier_failure(self._accumulator.model, e) from e
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or timed out): abort the generation so the engine frees
            # its slot instead of generating for nobody.
            self.cancel()
            raise

    def cancel(self) -> None:
        self._rest.cancel()

    def _observe(self, event: str) -> tuple[str, dict[str, Any] | None]:
        payload = parse_sse_event(event)
        if payload is None:
            return event, None
        self._accumulator.observe(payload)
        payload = without_engine_nulls(payload)
        return sse_event(payload), payload

    def answer(self) -> Answer:
        return self._accumulator.answer()


class TierClient:
    def __init__(self, handle: DeploymentHandle, model_id: str):
        self.handle = handle.options(stream=True)
        self.model_id = model_id

    def _call(self, body: dict[str, Any], kind: RequestKind, *, stream: bool) -> Any:
        request = _engine_request(body, kind, model=self.model_id, stream=stream)
        method = self.handle.chat if kind == "chat" else self.handle.completions
        return method.remote(request)

    async def complete(self, body: dict[str, Any], kind: RequestKind) -> dict[str, Any]:
        """One non-streamed response as a plain dict."""
        response = self._call(body, kind, stream=False)
        try:
            async for item in response:
                _raise_if_error(item)
                return without_engine_nulls(item.model_dump())
        except _TIER_FAILURES as e:
            raise _tier_failure(self.model_id, e) from e
        except asyncio.CancelledError:
            # Timed out or the client left: abort the generation in the engine.
            response.cancel()
            raise
        raise TierUnavailableError(f"Tier {self.model_id} returned no response.")

    async def open_stream(self, body: dict[str, Any], kind: RequestKind) -> TierStream:
        generator = self._call(body, kind, stream=True)
        try:
            first = await generator.__anext__()
        except StopAsyncIteration as e:
            raise TierUnavailableError(f"Tier {self.model_id} returned an empty stream.") from e
        except _TIER_FAILURES as e:
            raise _tier_failure(self.model_id, e) from e
        except asyncio.CancelledError:
            generator.cancel()
            raise
        _split_events(first)  # raises before any byte is sent if the engine refused
        return TierStream(first, generator, StreamAccumulator(kind, self.model_id))
