"""The one place the product reaches into Ray Serve LLM's private modules (Ray 2.60.0).

- `CallbackBase`: `LLMConfig.callback_config.callback_class` must name a subclass of it, and
  Ray 2.60 exports no public base class for LLMServer callbacks (`ray.serve.llm` has none).
  Replace this import with the public one once Ray exports it from `ray.serve.llm`.

Everything else the cascade uses of Ray Serve LLM is public (`ray.serve.llm`: LLMConfig,
build_llm_deployment; `ray.serve.llm.openai_api_models`: the request models).
"""

from ray.llm._internal.common.callbacks.base import CallbackBase

__all__ = ["CallbackBase"]
