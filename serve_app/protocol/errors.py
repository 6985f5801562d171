"""Domain errors of the cascade and their OpenAI-shaped HTTP form.

Everything the ingress can refuse or fail with is one of these; `openai_error_body` is the one
place that turns them into `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import math
from typing import Any

from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

# A call to another deployment failed in Ray or Serve (dead replica, overload, no replica),
# as opposed to the callee refusing the request.
DEPLOYMENT_CALL_FAILURES = (RayError, BackPressureError, DeploymentUnavailableError)


def _retry_after_header(retry_after_s: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(retry_after_s)))}


class CascadeError(Exception):
    """Base class: carries the HTTP status and OpenAI error type of the failure."""

    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers: dict[str, str] = {}


class InvalidRequestError(CascadeError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt and the answer's tokens do not fit a model's context, as counted by the
    ingress or refused by a tier's engine (OpenAI's code `context_length_exceeded`)."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message, param=param, code="context_length_exceeded")


class ModelNotFoundError(CascadeError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, model: str, available: list[str]):
        super().__init__(
            f"The model '{model}' does not exist. Available models: {', '.join(available)}.",
            param="model",
            code="model_not_found",
        )


class AuthenticationError(CascadeError):
    status_code = 401
    error_type = "invalid_request_error"


class PayloadTooLargeError(CascadeError):
    status_code = 413
    error_type = "invalid_request_error"


class RateLimitError(CascadeError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message, code="rate_limit_exceeded")
        self.headers = _retry_after_header(retry_after_s)


class BudgetExceededError(CascadeError):
    """An API key's dollar budget for the day or month is spent. A 429 like a rate limit (so
    OpenAI SDKs raise their RateLimitError), typed as OpenAI types a spent quota: retrying
    before Retry-After, the period's end, is pointless."""

    status_code = 429
    error_type = "insufficient_quota"

    def __init__(self, message: str, *, retry_after_s: float):
        super().__init__(message, code="budget_exceeded")
        self.headers = _retry_after_header(retry_after_s)


class AdminAuthError(CascadeError):
    status_code = 403
    error_type = "permission_error"


class TierUnavailableError(CascadeError):
    """No tier could produce an answer (after any fallback)."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 5.0):
        super().__init__(message)
        # A replica restarts or a circuit closes within seconds: tell clients when to retry.
        self.headers = _retry_after_header(retry_after_s)


class OverloadedError(TierUnavailableError):
    """A tier's queue is full (Ray Serve backpressure): refused at once instead of waiting."""

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message, retry_after_s=retry_after_s or 1.0)
        self.code = "overloaded"


class UpstreamError(CascadeError):
    """The engine rejected or failed the request; status mirrors what the engine said."""

    def __init__(self, message: str, *, status_code: int, error_type: str):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


class RequestTimeoutError(CascadeError):
    status_code = 504
    error_type = "timeout"


def openai_error_body(error: CascadeError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }
