"""Where the router scores requests: in the ingress replica, or in a deployment of its own.

A deployment hop costs the ingress ~2 ms of CPU a request (serialising the call, Serve's
router, the reply: measured by the gateway comparison, docs/benchmarks.md), while the
heuristic and a difficulty router that reads no embedding score a prompt in ~0.1 ms. Those run
in the ingress; a scorer that runs an encoder (an HF classifier, a difficulty router that
embeds the prompt) gets a deployment, where concurrent requests are batched into one forward
pass and replicas scale apart from the ingress. Ray-free: the builder calls it.
"""

from __future__ import annotations

import logging

from serve_app.config import RouterConfig
from serve_app.routing.difficulty import DifficultyModel, is_difficulty_router
from serve_app.routing.scorers import resolve_checkpoint

logger = logging.getLogger(__name__)


def scores_in_ingress(config: RouterConfig) -> bool:
    """True when the ingress should score requests itself (`router.placement`)."""
    if config.placement != "auto":
        return config.placement == "ingress"
    if config.deployment_config:
        return False  # the operator sized a router deployment
    if config.checkpoint is None:
        return True  # the heuristic
    return _is_linear_without_embedding(config.checkpoint)


def _is_linear_without_embedding(checkpoint: str) -> bool:
    try:
        directory = resolve_checkpoint(checkpoint)
        if not is_difficulty_router(directory):
            return False
        return not DifficultyModel.load(directory).uses_embedding
    except (OSError, ValueError, KeyError) as e:
        # Not readable where the application is built (a path only router nodes mount): the
        # deployment loads it where it runs, or falls back to the heuristic there, logged.
        logger.info("Router checkpoint %r not inspected here (%s): a deployment", checkpoint, e)
        return False
