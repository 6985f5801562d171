"""The one builder of the cascade's Ray Serve graph; `configs/*.yaml` point `import_path` here.

Ingress ─┬─ SemanticCache   (in the ingress where the store allows; else a deployment)
         ├─ Router          (a deployment for encoder scorers; cheap ones score in the ingress)
         ├─ llm-small       (Ray Serve LLM LLMServer over vLLM)
         └─ llm-large       (Ray Serve LLM LLMServer over vLLM)
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve.deployment import Application, Deployment

from serve_app.cache.deployment import SemanticCache
from serve_app.cache.placement import cache_placement
from serve_app.config import CACHE_DEPLOYMENT, ROUTER_DEPLOYMENT, CascadeConfig
from serve_app.gateway.ingress import CascadeIngress
from serve_app.routing.placement import scores_in_ingress
from serve_app.routing.router import ServedRouter
from serve_app.tiers.deployment import build_tier_deployment

# Small components need little CPU; on a 2-core box the LLM tiers must still be schedulable.
_LIGHT_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0.1},
}


# The cache and the router answer in milliseconds, once per admitted request; Serve's default
# of 5 ongoing requests per replica would queue them behind each other (and cap the router's
# batches at 5).
_HELPER_MAX_ONGOING_REQUESTS = 64


def _options(overrides: dict[str, Any], *, max_ongoing_requests: int) -> dict[str, Any]:
    options = {
        **_LIGHT_DEPLOYMENT_DEFAULTS,
        "max_ongoing_requests": max_ongoing_requests,
        **overrides,
    }
    if "autoscaling_config" in overrides:
        options.pop("num_replicas", None)
    return options


def build_app(args: dict[str, Any]) -> Application:
    """Validate the `args:` block of a Serve config and bind the full cascade graph."""
    config = CascadeConfig.model_validate(args)
    if config.ingress.share_deployments_of:
        # A second gateway: it finds the other application's tiers (and cache, if it shares
        # it) when it starts; its router and any cache of its own follow its own config.
        return _ingress_deployment(config).bind(
            config.model_dump(), router=_router(config), cache=_cache(config)
        )
    return bind_cascade(
        config,
        small=build_tier_deployment("small", config.tiers["small"]),
        large=build_tier_deployment("large", config.tiers["large"]),
    )


def _ingress_deployment(config: CascadeConfig) -> Deployment:
    ingress_options = _options(
        config.ingress.deployment_config,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
    )
    return serve.deployment(CascadeIngress, name="ingress", **ingress_options)


def bind_cascade(config: CascadeConfig, *, small: Application, large: Application) -> Application:
    """The ingress, cache and router in front of the given tier deployments: the LLMServers
    in the product; a benchmark binds stand-ins that answer like them
    (benchmarks/gateway_fake_backend.py)."""
    return _ingress_deployment(config).bind(
        config.model_dump(),
        small=small,
        large=large,
        router=_router(config),
        cache=_cache(config),
    )


def _cache(config: CascadeConfig) -> Application | None:
    """The cache deployment, or None when there is none of this application's own: the
    ingress holds the cache, shares another application's, or has none
    (serve_app.cache.placement)."""
    if cache_placement(config) != "deployment":
        return None
    helper = _HELPER_MAX_ONGOING_REQUESTS
    options = _options(config.cache.deployment_config, max_ongoing_requests=helper)
    deployment = serve.deployment(SemanticCache, name=CACHE_DEPLOYMENT, **options)
    return deployment.bind(config.cache.model_dump())


def _router(config: CascadeConfig) -> Application | None:
    """The router deployment, or None when the ingress scores requests itself
    (serve_app.routing.placement)."""
    if scores_in_ingress(config.router):
        return None
    helper = _HELPER_MAX_ONGOING_REQUESTS
    options = _options(config.router.deployment_config, max_ongoing_requests=helper)
    deployment = serve.deployment(ServedRouter, name=ROUTER_DEPLOYMENT, **options)
    return deployment.bind(config.router.model_dump())
