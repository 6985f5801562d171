"""The one place the product reaches into Ray Serve LLM's private modules (Ray 2.60.0).

- `CallbackBase`: `LLMConfig.callback_config.callback_class` must name a subclass of it, and
  Ray 2.60 exports no public base class for LLMServer callbacks (`ray.serve.llm` has none).
  Replace this import with the public one once Ray exports it from `ray.serve.llm`.

- `to_model_metadata`: the model card Ray Serve LLM's public `OpenAiIngress` needs per model when
  it is given deployment handles of its own choosing (the gateway comparison puts it in front of
  the cascade's own tier replica, benchmarks/gateway_real_engine.py). `build_openai_app` makes
  the cards itself but also builds its own LLMServers. Replace with a public card builder once
  `ray.serve.llm` exports one.

Everything else the cascade uses of Ray Serve LLM is public (`ray.serve.llm`: LLMConfig,
build_llm_deployment; `ray.serve.llm.openai_api_models`: the request models).
"""

from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

__all__ = ["CallbackBase", "to_model_metadata"]
