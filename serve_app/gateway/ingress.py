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
from serve_app.cache.deployment import SemanticCache
from serve_app.cache.placement import cache_placement
from serve_app.config import (
    CACHE_DEPLOYMENT,
    TIER_NAMES,
    CascadeConfig,
    TierName,
    tier_deployment_name,
)
from serve_app.gateway.pipeline import RequestPipeline
from serve_app.gateway.request_limits import read_body
from serve_app.protocol.errors import (
    AdminAuthError,
    CascadeError,
    InvalidRequestError,
    openai_error_body,
)
from serve_app.protocol.openai_api import (
    parse_json_object,
    request_json_schema,
)
from serve_app.routing.router import ServedRouter
from serve_app.tiers.availability import TierAvailability
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


def _handle(deployment: str, app_name: str) -> DeploymentHandle:
    """A deployment of another application; if it is not deployed yet, this replica fails to
    start and Serve retries it."""
    return serve.get_deployment_handle(deployment, app_name=app_name)


@serve.ingress(fastapi_app)
class CascadeIngress:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        small: DeploymentHandle | None = None,
        large: DeploymentHandle | None = None,
        router: DeploymentHandle | None = None,
        cache: DeploymentHandle | None = None,
    ):
        self.config = CascadeConfig.model_validate(config)
        shared_app = self.config.ingress.share_deployments_of
        if shared_app:
            small, large = (_handle(tier_deployment_name(t), shared_app) for t in TIER_NAMES)
        assert small is not None and large is not None
        metrics = IngressMetrics.create()
        cache_client = self._cache_client(cache, shared_app, metrics)
        tiers: dict[TierName, TierClient] = {
            "small": TierClient(small, self.config.tiers["small"].model_id),
            "large": TierClient(large, self.config.tiers["large"].model_id),
        }
        self.pipeline = RequestPipeline(
            self.config,
            tiers=tiers,
            router=self._router(router),
            cache=cache_client,
            metrics=metrics,
            tier_availability=self._tier_availability(shared_app),
        )

    def _cache_client(
        self, handle: DeploymentHandle | None, shared_app: str | None, metrics: IngressMetrics
    ) -> CacheClient | None:
        """The way to this gateway's cache (serve_app.cache.placement): the handle of its cache
        deployment, the shared application's, or the cache itself in this replica."""
        placement = cache_placement(self.config)
        cache: DeploymentHandle | SemanticCache | None = handle
        if placement == "shared":
            assert shared_app is not None
            cache = _handle(CACHE_DEPLOYMENT, shared_app)
        elif placement == "ingress":
            # An Edge shard does no I/O: its lookups run inline. A Qdrant server's go to a
            # thread, so a slow server holds up its lookups (until lookup_timeout_s), not the
            # event loop and every request on it.
            cache = SemanticCache(self.config.cache, inline=self.config.cache.store == "edge")
        return None if cache is None else CacheClient(cache, self.config.cache, metrics)

    def _router(self, handle: DeploymentHandle | None) -> DeploymentHandle | ServedRouter:
        """The router deployment's handle; without one (the builder binds none for a scorer
        cheaper than the hop, serve_app.routing.placement), the router itself, scoring in this
        replica."""
        if handle is None:
            return ServedRouter(self.config.router, batched=False)
        return handle

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica: a cache held here lets go of its shard
        # as soon as this replica has drained, for the replica replacing it.
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None and pipeline.cache is not None:
            pipeline.cache.close()

    def _tier_availability(self, shared_app: str | None) -> TierAvailability | None:
        watch_s = self.config.ingress.tier_watch_s
        if watch_s is None:
            return None
        app_name = shared_app or serve.get_replica_context().app_name
        return TierAvailability(app_name, self.config.tiers, watch_s)

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
        cards = [
            {"id": i, "object": "model", "created": created, "owned_by": "cascade"}
            for i in self.config.served_model_ids()
        ]
        return {"object": "list", "data": cards}

    @fastapi_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/admin/cost/summary")
    async def cost_summary(self, request: Request, tenant: str | None = None) -> dict[str, Any]:
        """This replica's spend, savings by lever and blended $/M since it started, of every
        tenant or of one (`?tenant=`: a configured tenant, or `other` for everyone else).

        Each ingress replica answers for itself; `python -m serve_app.ops.report` sums the
        Prometheus counters over every replica. Admin only: it covers every tenant.
        """
        self._authorize_admin(request)
        summary = self.pipeline.cost_summary(tenant)
        context = serve.get_replica_context()
        return {
            "scope": "replica",
            "replica": context.replica_id.unique_id,
            "replicas": context.world_size,
            "tenant": tenant,
            "since_unix_s": self.pipeline.ledger_since_s,
            **summary,
        }

    @fastapi_app.post(
        "/v1/route",
        openapi_extra=_json_body(
            {"anyOf": [request_json_schema("chat"), request_json_schema("completion")]}
        ),
    )
    async def route(self, request: Request) -> dict[str, Any]:
        """The router's decision for a chat or completion request, without generating.

        Authenticated, rate limited and admitted like a generation: in `api_keys` mode an
        unknown key gets 401 here too, and a flood of route calls cannot starve the others.
        """
        return await self.pipeline.explain_route(request)

    @fastapi_app.post("/admin/cache/invalidate", openapi_extra=_json_body(_INVALIDATE_SCHEMA))
    async def invalidate_cache(self, request: Request) -> dict[str, Any]:
        """Delete cached answers of one tenant (by its API key) and/or one model, or all."""
        self._authorize_admin(request)
        raw = await read_body(request, self.config.limits)
        body = parse_json_object(raw or b"{}", max_depth=self.config.limits.max_json_depth)
        unknown = set(body) - {"tenant", "tenant_api_key", "model"}
        if unknown:
            raise InvalidRequestError(f"Unknown fields: {sorted(unknown)}", param=min(unknown))
        for name, value in body.items():
            if value is not None and not isinstance(value, str):
                raise InvalidRequestError(f"'{name}' must be a string.", param=name)
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
