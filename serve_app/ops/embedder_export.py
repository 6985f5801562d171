"""Export the cache's embedder to ONNX (`python -m serve_app.ops.embedder_export`).

The semantic cache embeds every prompt; `serve_app.cache.embedder.OnnxEmbedder` runs an ONNX
Runtime export of all-MiniLM-L6-v2 (mean pooling and L2 normalisation inside the graph),
~5x faster than torch on a CPU. This builds it into the model cache, where a
`packaged://all-minilm-l6-v2-onnx[-int8]` source finds it: `all-minilm-l6-v2-onnx` (fp32) and
`all-minilm-l6-v2-onnx-int8` (dynamic int8). Each export is checked against
sentence-transformers before it is marked ready. Run it once per node or image at set-up
(`make models` does it locally; cluster.yaml and the image recipe in deploy/ on clusters).
Idempotent: a finished export is reused, an interrupted one rebuilt.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from serve_app.model_sources import PACKAGED_SCHEME, prepare_into_cache, resolve_model_source

logger = logging.getLogger(__name__)

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
    quantize_sentence_onnx(prepare_embedder(MINILM_ONNX), target)
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


EMBEDDER_EXPORTS: dict[str, Callable[[Path], None]] = {
    MINILM_ONNX: _prepare_minilm_onnx,
    MINILM_ONNX_INT8: _prepare_minilm_onnx_int8,
}


def prepare_embedder(name: str) -> Path:
    """The model-cache directory of an ONNX embedder export, building it on first use."""
    if name not in EMBEDDER_EXPORTS:
        raise ValueError(f"unknown embedder export {name!r}; known: {list(EMBEDDER_EXPORTS)}")
    return prepare_into_cache(name, EMBEDDER_EXPORTS[name])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Export the semantic cache's embedder (all-MiniLM-L6-v2) to ONNX into the "
        "model cache (idempotent). Prints each export's directory."
    )
    parser.add_argument(
        "exports", nargs="*", default=list(EMBEDDER_EXPORTS), help="export names (default: all)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.exports:
        print(f"{name}: {prepare_embedder(name)}")


if __name__ == "__main__":
    main()
