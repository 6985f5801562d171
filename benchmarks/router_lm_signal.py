"""Does the small model's own view of a prompt predict where the large tier helps, across sources?

Issue 20 asks for difficulty signals that carry to a source the router never saw, and names one
only the cascade has: how the small model itself scores the prompt. This experiment computes,
with the local small tier's weights (SmolLM2-135M-Instruct in transformers, one thread; a
stand-in for the production Llama-3.1-8B, which cannot run here), for a seeded sample of each
source of `configs/router_training_all.yaml`:

- the prompt's token log-probabilities under the chat template (mean, minimum, 10th percentile);
- the entropy and top-1 log-probability of the first answer token's distribution;
- the prompt's length in tokens;

then prints each feature's ROC AUC against `large_better` within every source (the direction a
signal must keep to carry), and the leave-one-source-out APGR of a logistic model on each
feature set (centred and scaled within each source, every source the same total weight, as the
shipped router is trained).

    python -m benchmarks.router_lm_signal                       # 250 prompts a source, ~12 min
    python -m benchmarks.router_lm_signal --per-source 40       # a quick look
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from router_training.metrics import router_metrics

FEATURES = ("mean_lp", "min_lp", "p10_lp", "first_entropy", "first_top1", "log_tokens")
FEATURE_SETS = (
    ("log_tokens",),
    ("mean_lp",),
    ("first_entropy",),
    ("log_tokens", "mean_lp"),
    FEATURES,
)
MAX_TOKENS = 160  # the head of a long prompt and the template's tail (the generation prompt)
TAIL_TOKENS = 8


def sample_prompts(config_path: Path, per_source: int, seed: int) -> list[dict[str, Any]]:
    from router_training.config import load_any_config
    from router_training.multi_source import build_corpus

    corpus = build_corpus(load_any_config(config_path), embed=False)
    rng = np.random.default_rng(seed)
    rows = []
    for source in sorted(set(corpus.sources)):
        index = np.flatnonzero(corpus.sources == source)
        for i in rng.choice(index, min(per_source, len(index)), replace=False):
            outcome = corpus.outcomes[i]
            rows.append(
                {
                    "source": str(source),
                    "prompt": outcome.prompt,
                    "label": int(corpus.labels[i]),
                    "small": outcome.small_score,
                    "large": outcome.large_score,
                }
            )
    return rows


def add_lm_features(rows: list[dict[str, Any]]) -> None:
    """The small model's log-probabilities of each prompt and of its first answer token."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.engine_workloads import model_dir

    torch.set_num_threads(1)
    path = str(model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    for row in tqdm(rows, desc="small model over prompts", unit="prompt"):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["prompt"]}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        row["log_tokens"] = float(np.log1p(ids.shape[1]))
        if ids.shape[1] > MAX_TOKENS:
            ids = torch.cat([ids[:, : MAX_TOKENS - TAIL_TOKENS], ids[:, -TAIL_TOKENS:]], dim=1)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        token_lp = logprobs[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()
        # The user's text: past the template's opening tokens, before its closing ones.
        body = token_lp[3:-TAIL_TOKENS] if len(token_lp) > 12 else token_lp
        first = logprobs[-1]
        row |= {
            "mean_lp": float(np.mean(body)),
            "min_lp": float(np.min(body)),
            "p10_lp": float(np.percentile(body, 10)),
            "first_entropy": float(-(first.exp() * first).sum()),
            "first_top1": float(first.max()),
        }


def _auc(labels: list[int], values: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, values))


def per_source_auc(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    sources = sorted({row["source"] for row in rows})
    return {
        feature: {
            source: _auc(
                [r["label"] for r in rows if r["source"] == source],
                [r[feature] for r in rows if r["source"] == source],
            )
            for source in sources
        }
        for feature in FEATURES
    }


def _matrix(rows: list[dict[str, Any]], features: tuple[str, ...]) -> np.ndarray:
    matrix = np.array([[row[f] for f in features] for row in rows])
    sources = np.array([row["source"] for row in rows])
    for source in set(sources):
        block = sources == source
        matrix[block] = (matrix[block] - matrix[block].mean(0)) / (matrix[block].std(0) + 1e-9)
    return matrix


def loso_apgr(rows: list[dict[str, Any]], features: tuple[str, ...]) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    result = {}
    for source in sorted({row["source"] for row in rows}):
        train = [r for r in rows if r["source"] != source]
        test = [r for r in rows if r["source"] == source]
        counts = {s: sum(r["source"] == s for r in train) for s in {r["source"] for r in train}}
        weights = np.array([1.0 / counts[r["source"]] for r in train])
        model = LogisticRegression(C=1.0).fit(
            _matrix(train, features), [r["label"] for r in train], sample_weight=weights
        )
        metrics = router_metrics(
            model.decision_function(_matrix(test, features)),
            np.array([r["small"] for r in test]),
            np.array([r["large"] for r in test]),
            np.array([r["label"] for r in test]),
        )
        result[source] = float(metrics.apgr)
    return result


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    loso = {"+".join(fs): loso_apgr(rows, fs) for fs in FEATURE_SETS}
    return {
        "prompts": len(rows),
        "auc_large_better": per_source_auc(rows),
        "loso_apgr": loso,
        "loso_mean": {name: float(np.mean(list(v.values()))) for name, v in loso.items()},
    }


def print_report(result: dict[str, Any]) -> None:
    sources = sorted(next(iter(result["auc_large_better"].values())))
    print(f"\nROC AUC against large_better, within each source ({result['prompts']} prompts)")
    print(f"{'feature':16}" + "".join(f"{s:>10}" for s in sources))
    for feature, row in result["auc_large_better"].items():
        print(f"{feature:16}" + "".join(f"{row[s]:10.3f}" for s in sources))
    print("\nLeave-one-source-out APGR")
    print(f"{'features':60}" + "".join(f"{s:>10}" for s in sources) + f"{'mean':>8}")
    for name, row in result["loso_apgr"].items():
        cells = "".join(f"{row[s]:10.3f}" for s in sources)
        print(f"{name:60}{cells}{result['loso_mean'][name]:8.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/router_training_all.yaml"))
    parser.add_argument("--per-source", type=int, default=250, help="prompts sampled a source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/router_lm_signal.json"))
    args = parser.parse_args(argv)
    rows = sample_prompts(args.config, args.per_source, args.seed)
    add_lm_features(rows)
    result = report(rows)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result | {"rows": rows}, indent=1))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
