"""Where the semantic cache looks up and stores: in the ingress replica, or in a deployment.

A deployment hop costs more CPU than the lookup it carries: of the cache replica's ~9.5 ms of
CPU a request, ~3 ms were the lookup itself (embedding ~2 ms, search ~0.3 ms) and ~6.5 ms
Ray's machinery for the two calls (lookup, store), with the ingress paying its side of each
call too (py-spy, docs/benchmarks.md). So the ingress looks up itself wherever the store
allows: a Qdrant server is shared by any number of replicas, an Edge shard is owned by one
process (a single, fixed ingress replica). A sized `deployment_config` asks for a deployment.
Ray-free: the builder and the ingress call it.
"""

from __future__ import annotations

from typing import Literal

from serve_app.config import CascadeConfig

CachePlacement = Literal["ingress", "deployment", "shared", "off"]
"""`ingress`: each ingress replica holds the cache; `deployment`: a cache deployment of this
application; `shared`: the cache deployment of the application in `share_deployments_of`;
`off`: no cache."""


def cache_placement(config: CascadeConfig) -> CachePlacement:
    """Where this application's cache runs (`cache.placement`)."""
    cache = config.cache
    if not cache.enabled:
        return "off"
    if cache.placement != "auto":
        return cache.placement
    if config.ingress.share_deployments_of and cache.store == "edge":
        return "shared"  # the first application owns the shard
    if cache.deployment_config:
        return "deployment"  # the operator sized a cache deployment
    if config.edge_shard_behind_several_ingresses:
        return "deployment"
    return "ingress"
