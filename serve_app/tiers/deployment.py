"""LLM tiers: Ray Serve LLM `LLMServer` deployments over vLLM, one per tier.

The same function builds the CPU tiers of `configs/local.yaml` and the GPU tiers of
`configs/production.yaml`; only the TierConfig differs.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from serve_app.config import TierConfig, TierName, tier_deployment_name
from serve_app.model_sources import resolve_model_source
from serve_app.tiers.ray_llm_internals import CallbackBase


class SkipNodeInitForLocalModel(CallbackBase):
    """Skip Ray Serve LLM's per-node "download" step when there is nothing to download.

    Before starting vLLM, every LLMServer replica runs a Ray task on each node of its
    placement group to fetch the model. For a model that is already a directory on this
    node (the packaged CPU models), that task only returns the same path, yet it costs a
    fresh worker process: ~14 s of a replica's restart under load on a 2-core box. A
    placement group that reaches another node, or a hub/S3 source, still gets the step.
    """

    async def on_before_node_init(self) -> None:
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and os.path.isdir(source) and self._placement_is_local():
            self.ctx.run_init_node = False

    def _placement_is_local(self) -> bool:
        if self.ctx.placement_group is None:
            return False
        table = ray.util.placement_group_table(self.ctx.placement_group)
        nodes = set(table.get("bundles_to_node_id", {}).values())
        return nodes == {ray.get_runtime_context().get_node_id()}


def _runtime_env(tier: TierConfig) -> dict[str, Any] | None:
    runtime_env = dict(tier.runtime_env)
    if tier.env_vars:
        runtime_env["env_vars"] = dict(tier.env_vars)
    return runtime_env or None


def llm_config_for_tier(tier: TierConfig, *, resolve_packaged: bool = True) -> LLMConfig:
    """Translate our tier config into Ray Serve LLM's LLMConfig."""
    source = resolve_model_source(tier.model_source) if resolve_packaged else tier.model_source
    callback = f"{SkipNodeInitForLocalModel.__module__}:{SkipNodeInitForLocalModel.__name__}"
    options: dict[str, Any] = {
        "model_loading_config": {"model_id": tier.model_id, "model_source": source},
        "engine_kwargs": dict(tier.engine_kwargs),
        "deployment_config": dict(tier.deployment_config),
        "runtime_env": _runtime_env(tier),
        "callback_config": {"callback_class": callback},
    }
    if tier.accelerator == "cpu":
        options["accelerator_config"] = {"kind": "cpu"}
    elif tier.accelerator_type:
        options["accelerator_type"] = tier.accelerator_type
    if tier.placement_group_config is not None:
        options["placement_group_config"] = dict(tier.placement_group_config)
    return LLMConfig(**options)


def build_tier_deployment(name: TierName, tier: TierConfig) -> Application:
    return build_llm_deployment(
        llm_config_for_tier(tier), override_serve_options={"name": tier_deployment_name(name)}
    )
