"""LLM tiers: Ray Serve LLM `LLMServer` deployments over vLLM, one per tier.

The same function builds the CPU tiers of `configs/local.yaml` and the GPU tiers of
`configs/production.yaml`; only the TierConfig differs.
"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application
from ray.serve.llm import LLMConfig, build_llm_deployment

from serve_app.config import TierConfig, TierName
from serve_app.local_models import resolve_model_source


def llm_config_for_tier(tier: TierConfig, *, resolve_packaged: bool = True) -> LLMConfig:
    """Translate our tier config into Ray Serve LLM's LLMConfig."""
    source = resolve_model_source(tier.model_source) if resolve_packaged else tier.model_source
    options: dict[str, Any] = {
        "model_loading_config": {"model_id": tier.model_id, "model_source": source},
        "engine_kwargs": dict(tier.engine_kwargs),
        "deployment_config": dict(tier.deployment_config),
        "runtime_env": {"env_vars": dict(tier.env_vars)} if tier.env_vars else None,
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
        llm_config_for_tier(tier), override_serve_options={"name": f"llm-{name}"}
    )
