"""OpenAI-compatible HTTP ingress: the routes of the API (chat, completions, models,
route, admin); each request then takes the path in gateway/pipeline.py.
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.accounting.metrics import IngressMetrics
from serve_app.cache.client import CacheClient
from serve_app.config import TIER_NAMES, CascadeConfig, TierName
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.gateway.request_limits import read_body
from serve_app.protocol.errors import (
    AdminAuthError,
    CascadeError,
    InvalidRequestError,
    openai_error_body,
)
from serve_app.protocol.openai_api import (
    RequestKind,
    parse_json_object,
    request_json_schema,
    validate_request,
)
from serve_app.routing.text import routing_text
from serve_app.tiers.client import TierClient

fastapi_app = FastAPI(title="LLM cascade", description="OpenAI-compatible cost-optimising cascade")


@fastapi_app.exception_handler(CascadeError)
async def _cascade_error_handler(_: Request, error: CascadeError) -> JSONResponse:
    return JSONResponse(
        openai_error_body(error), status_code=error.status_code, headers=error.headers
    )


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error_handler(_: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse(openai_error_body(InvalidRequestError(str(error))), status_code=400)


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI `requestBody` of an endpoint that parses its body itself (for limits and 400s).

    The schema documents the API and drives the schemathesis fuzzing of the ingress.
    """
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


_INVALIDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "tenant": {"type": "string"},
        "tenant_api_key": {"type": "string"},
        "model": {"type": "string"},
    },
}


@serve.ingress(fastapi_app)
class CascadeIngress:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        small: DeploymentHandle,
        large: DeploymentHandle,
        router: DeploymentHandle,
        cache: DeploymentHandle | None = None,
    ):
        self.config = CascadeConfig.model_validate(config)
        metrics = IngressMetrics.create()
        cache_client = None
        if cache is not None and self.config.cache.enabled:
            cache_client = CacheClient(cache, self.config.cache, metrics)
        tiers: dict[TierName, TierClient] = {
            "small": TierClient(small, self.config.tiers["small"].model_id),
            "large": TierClient(large, self.config.tiers["large"].model_id),
        }
        self.pipeline = RequestPipeline(
            self.config, tiers=tiers, router=router, cache=cache_client, metrics=metrics
        )

    # ---- endpoints ---------------------------------------------------------------------

    @fastapi_app.post("/v1/chat/completions", openapi_extra=_json_body(request_json_schema("chat")))
    async def chat_completions(self, request: Request) -> Response:
        return await self.pipeline.handle(request, "chat")

    @fastapi_app.post(
        "/v1/completions", openapi_extra=_json_body(request_json_schema("completion"))
    )
    async def completions(self, request: Request) -> Response:
        return await self.pipeline.handle(request, "completion")

    @fastapi_app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        created = int(time.time())
        ids = [self.config.ingress.cascade_model_id]
        ids += [self.config.tiers[name].model_id for name in TIER_NAMES]
        cards = [
            {"id": i, "object": "model", "created": created, "owned_by": "cascade"} for i in ids
        ]
        return {"object": "list", "data": cards}

    @fastapi_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/admin/cost/summary")
    async def cost_summary(self, request: Request) -> dict[str, Any]:
        """This replica's spend, savings by lever and blended $/M since it started.

        Each ingress replica answers for itself; `python -m serve_app.ops.report` sums the
        Prometheus counters over every replica. Admin only: it totals every tenant.
        """
        self._authorize_admin(request)
        context = serve.get_replica_context()
        return {
            "scope": "replica",
            "replica": context.replica_id.unique_id,
            "replicas": context.world_size,
            "since_unix_s": self.pipeline.ledger_since_s,
            **self.pipeline.ledger.summary(),
        }

    @fastapi_app.post(
        "/v1/route",
        openapi_extra=_json_body(
            {"anyOf": [request_json_schema("chat"), request_json_schema("completion")]}
        ),
    )
    async def route(self, request: Request) -> dict[str, Any]:
        """The router's decision for a chat or completion request, without generating."""
        raw = await read_body(request, self.config.limits)
        body = parse_json_object(raw, max_depth=self.config.limits.max_json_depth)
        kind: RequestKind = "chat" if "messages" in body else "completion"
        body = validate_request(body, kind)
        decision = await self.pipeline.router.route.remote(routing_text(body, kind))
        return {
            "tier": decision.tier,
            "model": self.config.tiers[decision.tier].model_id,
            "score": decision.score,
            "threshold": decision.threshold,
            "scorer": decision.scorer,
            "latency_ms": decision.latency_ms,
        }

    @fastapi_app.post("/admin/cache/invalidate", openapi_extra=_json_body(_INVALIDATE_SCHEMA))
    async def invalidate_cache(self, request: Request) -> dict[str, Any]:
        """Delete cached answers of one tenant (by its API key) and/or one model, or all."""
        self._authorize_admin(request)
        raw = await read_body(request, self.config.limits)
        body = parse_json_object(raw or b"{}", max_depth=self.config.limits.max_json_depth)
        unknown = set(body) - {"tenant", "tenant_api_key", "model"}
        if unknown:
            raise InvalidRequestError(f"Unknown fields: {sorted(unknown)}", param=min(unknown))
        if self.pipeline.cache is None:
            return {"deleted": 0}
        tenant = body.get("tenant")
        if body.get("tenant_api_key"):
            key_header = {"authorization": f"Bearer {body['tenant_api_key']}"}
            tenant = self.pipeline.auth.authenticate(key_header).tenant
        deleted = await self.pipeline.cache.invalidate(tenant=tenant, model=body.get("model"))
        return {"deleted": deleted}

    def _authorize_admin(self, request: Request) -> None:
        expected = os.environ.get(self.config.ingress.admin_token_env or "", "")
        if not expected:
            raise AdminAuthError("The admin API is disabled: no admin token is configured.")
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise AdminAuthError("Invalid admin token.")
