"""Bounds on a request, checked at the ingress before anything reaches a tier.

A tier must never be the one to reject a request: vLLM answers an over-long max_tokens with
an error deep in the engine, and a huge body costs memory in every hop.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from serve_app.config import LimitsConfig
from serve_app.protocol.errors import InvalidRequestError, PayloadTooLargeError
from serve_app.protocol.headers import seconds_header
from serve_app.protocol.openai_api import RequestKind


async def read_body(request: Request, limits: LimitsConfig) -> bytes:
    """The request body, refused with 413 past `max_body_bytes` (before reading it if declared)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise PayloadTooLargeError(_too_large(limits))
    raw = await request.body()
    if len(raw) > limits.max_body_bytes:
        raise PayloadTooLargeError(_too_large(limits))
    return raw


def _too_large(limits: LimitsConfig) -> str:
    return f"Request body exceeds the limit of {limits.max_body_bytes} bytes."


def check_request_limits(
    body: dict[str, Any], kind: RequestKind, limits: LimitsConfig, max_model_len: int | None
) -> None:
    if kind == "chat" and len(body["messages"]) > limits.max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(body['messages'])} > {limits.max_messages}.",
            param="messages",
        )
    if max_model_len is None:
        return
    # Completions have no `max_completion_tokens`: there it is an unvalidated extra field.
    params = ("max_tokens", "max_completion_tokens") if kind == "chat" else ("max_tokens",)
    for param in params:
        value = body.get(param)
        if value is not None and value >= max_model_len:
            raise InvalidRequestError(
                f"'{param}' is {value}, but this model's context holds {max_model_len} tokens "
                "including the prompt.",
                param=param,
            )


CLIENT_TIMEOUT_HEADER = "x-cascade-timeout-s"


def request_timeout_s(headers: Any, configured_s: float) -> float:
    """The request's deadline: the configured one, or the client's own if it is shorter.

    A client that gives up after N seconds gains nothing from a generation that runs longer;
    with its deadline the cascade aborts the generation and frees the engine slot at N.
    """
    client_s = seconds_header(headers, CLIENT_TIMEOUT_HEADER)
    if client_s is None:
        return configured_s
    if client_s == float("inf"):
        raise InvalidRequestError(f"{CLIENT_TIMEOUT_HEADER} must be a positive number.")
    return min(client_s, configured_s)
