"""Train and evaluate the difficulty router (serve_app.routing.difficulty) across sources.

`run_multi_source` (`python -m router_training run --config configs/router_training_all.yaml`):
1. loads every source (a seeded sample of the large ones), embeds every prompt once with the
   serving embedder (cached on disk) and computes the prompt features;
2. leave-one-source-out (LOSO): for each source, fits on the others (minus any question the
   left-out source shares with them) and evaluates on all of the left-out source, for the
   configured model and every ablation, beside random, the heuristic and prompt length;
3. in distribution: for each seed, splits every source's questions 70/10/20, fits on the
   pooled training split and evaluates on each source's test split;
4. the shipped router: fits on everything but a pooled validation split (seed 0's), sets the
   calibration offset and picks the threshold on that validation split, measures the
   operating curve there (large-tier share and quality at every threshold, from which the
   serving router derives the threshold of an operator's `router.target`), and writes the
   artefact (card + weights) to `export_dir`, proving that the serving scorer reproduces the
   evaluated scores.

`write_operating_curve` (`python -m router_training curve --config ...`) measures the curve
of an already exported router and adds it to its card, without refitting.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from router_training.config import DifficultyModelConfig, MultiSourceConfig
from router_training.data import Outcome, router_label, split_by_group
from router_training.features import cache_root, sentence_embeddings
from router_training.metrics import random_router_metrics, router_metrics
from router_training.sources import dataset_of, load_sources
from serve_app.routing.difficulty import (
    FEATURE_NAMES,
    ROUTER_KIND,
    DifficultyModel,
    prompt_feature_matrix,
)
from serve_app.routing.heuristic import HeuristicScorer
from serve_app.routing.lexical import TOKEN, LexicalPrior
from serve_app.routing.operating_point import OPERATING_CURVE_KEY, OperatingCurve
from serve_app.routing.scorers import ROUTER_CARD_FILE

logger = logging.getLogger(__name__)

METRIC_KEYS = ("apgr", "cpt50_pct", "roc_auc")


@dataclass(frozen=True)
class Corpus:
    """Every prompt with its outcomes, source, features and embedding (row-aligned)."""

    outcomes: list[Outcome]
    sources: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    embeddings: np.ndarray

    def take(self, index: np.ndarray) -> Corpus:
        return Corpus(
            [self.outcomes[i] for i in index],
            self.sources[index],
            self.labels[index],
            self.features[index],
            self.embeddings[index],
        )

    @property
    def texts(self) -> list[str]:
        return [o.prompt for o in self.outcomes]


def build_corpus(config: MultiSourceConfig, *, embed: bool = True) -> Corpus:
    """Every configured prompt; `embed=False` leaves the embeddings empty, for models that
    read none (the MiniLM pass is most of the cost when nothing is cached)."""
    from serve_app.routing.embedding import SentenceEmbedder

    outcomes = load_sources(config.sources, config.data_seed)
    texts = [o.prompt for o in outcomes]
    if embed:
        embedder = SentenceEmbedder(config.model.embedding_model)
        embeddings = sentence_embeddings(embedder, texts, cache_root(config.cache_dir), "embedding")
    else:
        embeddings = np.zeros((len(texts), 0), dtype=np.float32)
    features = np.stack(
        [prompt_feature_matrix([t])[0] for t in tqdm(texts, desc="prompt features", unit="prompt")]
    )
    return Corpus(
        outcomes,
        np.array([dataset_of(o) for o in outcomes]),
        np.array([router_label(o, config.label_rule) for o in outcomes], dtype=np.int64),
        features,
        embeddings,
    )


# ---------------------------------------------------------------- fitting


def fit_model(train: Corpus, config: DifficultyModelConfig) -> DifficultyModel:
    """One logistic regression on the configured blocks; returns the serving model (its
    calibration still the identity)."""
    blocks = set(config.features)
    mean = train.features.mean(axis=0)
    scale = train.features.std(axis=0)
    scale[scale < 1e-9] = 1.0
    used = np.array(
        [config.prompt_features is None or n in config.prompt_features for n in FEATURE_NAMES]
    )
    unknown = set(config.prompt_features or ()) - set(FEATURE_NAMES)
    if unknown:
        raise ValueError(f"unknown prompt features {sorted(unknown)}; known: {FEATURE_NAMES}")
    dense = []
    if "prompt" in blocks:
        dense.append(((train.features - mean) / scale)[:, used])
    if "embedding" in blocks:
        dense.append(train.embeddings.astype(np.float64) * config.embedding_scale)
    matrix = np.hstack(dense) if dense else np.zeros((len(train.labels), 0))
    if config.center_by_source and matrix.shape[1]:
        matrix = matrix - _source_means(matrix, train.sources)
    vectorizer = None
    if "lexical" in blocks:
        vectorizer = TfidfVectorizer(
            ngram_range=(1, 2),
            min_df=config.lexical_min_df,
            sublinear_tf=True,
            lowercase=True,
            token_pattern=TOKEN.pattern,
        )
        tfidf = vectorizer.fit_transform(train.texts) * config.lexical_scale
        matrix = sparse.hstack([sparse.csr_matrix(matrix), tfidf]).tocsr()
    regression = LogisticRegression(C=config.inverse_regularisation, max_iter=5000)
    regression.fit(matrix, train.labels, sample_weight=_weights(train.sources, config))
    coef = regression.coef_[0]
    n_prompt = int(used.sum()) if "prompt" in blocks else 0
    n_embedding = train.embeddings.shape[1] if "embedding" in blocks else 0
    feature_coef = np.zeros(len(FEATURE_NAMES))
    if n_prompt:
        feature_coef[used] = coef[:n_prompt]
    lexical = None
    if vectorizer is not None:
        lexical = LexicalPrior(
            vocabulary={term: int(i) for term, i in vectorizer.vocabulary_.items()},
            idf=vectorizer.idf_.astype(np.float64),
            coef=coef[n_prompt + n_embedding :] * config.lexical_scale,
            intercept=0.0,
            ngram_max=2,
            weight=1.0,
        )
    return DifficultyModel(
        feature_names=FEATURE_NAMES,
        feature_mean=mean,
        feature_scale=scale,
        feature_coef=np.asarray(feature_coef, dtype=np.float64),
        embedding_coef=(
            coef[n_prompt : n_prompt + n_embedding] * config.embedding_scale
            if n_embedding
            else None
        ),
        lexical=lexical,
        intercept=float(regression.intercept_[0]),
    )


def _source_means(matrix: np.ndarray, sources: np.ndarray) -> np.ndarray:
    means = np.empty_like(matrix)
    for source in np.unique(sources):
        rows = sources == source
        means[rows] = matrix[rows].mean(axis=0)
    return means


def _weights(sources: np.ndarray, config: DifficultyModelConfig) -> np.ndarray:
    if config.source_weighting == "none":
        return np.ones(len(sources))
    names, inverse, counts = np.unique(sources, return_inverse=True, return_counts=True)
    return len(sources) / (len(names) * counts[inverse])


def score(model: DifficultyModel, corpus: Corpus) -> np.ndarray:
    """The serving model's score (DifficultyModel.score, as DifficultyScorer calls it)."""
    embeddings = corpus.embeddings if model.uses_embedding else None
    return model.score(corpus.texts, embeddings)


def with_calibration(model: DifficultyModel, val: Corpus) -> DifficultyModel:
    """Shift the linear score so the mean probability on the validation prompts equals their
    positive rate. The slope stays the fitted one (1): the weights were fitted to rank within
    sources, and a slope fitted on the pooled prompts can come out negative (the sources'
    base rates differ more than the within-source signal), which would invert the ranking.
    """
    embeddings = val.embeddings if model.uses_embedding else None
    linear = model.linear(val.texts, embeddings)
    target = float(val.labels.mean())
    low, high = -20.0, 20.0
    for _ in range(100):  # bisection: the mean probability is increasing in the offset
        mid = (low + high) / 2.0
        if float(np.mean(1.0 / (1.0 + np.exp(-(linear + mid))))) < target:
            low = mid
        else:
            high = mid
    return DifficultyModel(
        **{**vars(model), "calibration_slope": 1.0, "calibration_intercept": (low + high) / 2.0}
    )


# ---------------------------------------------------------------- evaluation


def evaluate_on(
    name_scores: dict[str, np.ndarray], corpus: Corpus, random_seeds: Sequence[int]
) -> dict[str, dict[str, float | None]]:
    """APGR, CPT(50%), ROC AUC of each score vector, plus random/heuristic/length."""
    weak = np.array([o.small_score for o in corpus.outcomes])
    strong = np.array([o.large_score for o in corpus.outcomes])
    baselines = {
        "heuristic": np.array(HeuristicScorer().score_batch(corpus.texts)),
        "length": corpus.features[:, FEATURE_NAMES.index("log_words")],
    }
    out: dict[str, dict[str, float | None]] = {}
    for name, scores in {**name_scores, **baselines}.items():
        m = router_metrics(scores, weak, strong, corpus.labels)
        out[name] = {"apgr": m.apgr, "cpt50_pct": m.cpt50_pct, "roc_auc": m.roc_auc}
    runs = random_router_metrics(weak, strong, list(random_seeds), corpus.labels)
    out["random"] = {key: float(np.mean([getattr(m, key) for m in runs])) for key in METRIC_KEYS}
    return out


def _variants(config: MultiSourceConfig) -> dict[str, DifficultyModelConfig]:
    """The configured model ("router") and every ablation, validated like the model."""
    return {"router": config.model} | {
        a.name: DifficultyModelConfig.model_validate(config.model.model_dump() | a.model)
        for a in config.ablations
    }


def loso(corpus: Corpus, config: MultiSourceConfig) -> dict[str, Any]:
    """Per left-out source: every variant's metrics on that whole source."""
    variants = _variants(config)
    results: dict[str, Any] = {}
    for source in tqdm(sorted(np.unique(corpus.sources)), desc="leave one source out"):
        held = corpus.sources == source
        held_groups = {corpus.outcomes[i].group for i in np.flatnonzero(held)}
        train_index = np.array(
            [i for i in np.flatnonzero(~held) if corpus.outcomes[i].group not in held_groups]
        )
        train, test = corpus.take(train_index), corpus.take(np.flatnonzero(held))
        scores = {
            name: score(fit_model(train, variant), test) for name, variant in variants.items()
        }
        results[str(source)] = {
            "prompts": len(test.labels),
            "train_prompts": len(train.labels),
            "metrics": evaluate_on(scores, test, config.random_seeds),
        }
    return results


def split_indices(corpus: Corpus, config: MultiSourceConfig, seed: int) -> dict[str, np.ndarray]:
    """Question groups split 70/10/20 within every sub-source (shared questions together)."""
    split = split_by_group(corpus.outcomes, seed, config.val_fraction, config.test_fraction)
    position = {o.id: i for i, o in enumerate(corpus.outcomes)}
    return {
        name: np.array(sorted(position[o.id] for o in getattr(split, name)), dtype=np.int64)
        for name in ("train", "val", "test")
    }


def in_distribution(corpus: Corpus, config: MultiSourceConfig) -> dict[str, Any]:
    """Per seed and source: metrics on that source's test split of a pooled fit."""
    results: dict[str, Any] = {}
    for seed in tqdm(config.seeds, desc="in-distribution seeds"):
        parts = split_indices(corpus, config, seed)
        train = corpus.take(parts["train"])
        models = {name: fit_model(train, variant) for name, variant in _variants(config).items()}
        test = corpus.take(parts["test"])
        per_source = {}
        for source in sorted(np.unique(test.sources)):
            rows = corpus.take(parts["test"][test.sources == source])
            scores = {name: score(model, rows) for name, model in models.items()}
            per_source[str(source)] = {
                "prompts": len(rows.labels),
                "metrics": evaluate_on(scores, rows, config.random_seeds),
            }
        results[str(seed)] = per_source
    return results


def mean_over_seeds(per_seed: dict[str, Any]) -> dict[str, Any]:
    """{source: {router name: mean metrics}} over the seeds."""
    collected: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for per_source in per_seed.values():
        for source, entry in per_source.items():
            for name, metrics in entry["metrics"].items():
                collected[source][name].append(metrics)
    return {
        source: {
            name: {key: float(np.mean([r[key] for r in rows])) for key in METRIC_KEYS}
            for name, rows in names.items()
        }
        for source, names in collected.items()
    }


# ---------------------------------------------------------------- calibration and export


def threshold_for_quality(
    scores: np.ndarray, weak: np.ndarray, strong: np.ndarray, share: float
) -> dict[str, float]:
    """The highest threshold (fewest large-tier prompts) whose quality reaches `share` of the
    all-large quality; routing is `score >= threshold`."""
    target = share * strong.mean()
    best = float(scores.min())
    for threshold in np.unique(scores)[::-1]:
        quality = np.where(scores >= threshold, strong, weak).mean()
        if quality >= target:
            best = float(threshold)
            break
    to_large = scores >= best
    quality = float(np.where(to_large, strong, weak).mean())
    return {
        "threshold": best,
        "target": f"quality >= {share:.2f} x all-large quality",
        "large_share": float(to_large.mean()),
        "quality": quality,
        "all_large_quality": float(strong.mean()),
        "all_small_quality": float(weak.mean()),
        "num_prompts": int(len(scores)),
    }


def at_threshold(scores: np.ndarray, corpus: Corpus, threshold: float) -> dict[str, float]:
    weak = np.array([o.small_score for o in corpus.outcomes])
    strong = np.array([o.large_score for o in corpus.outcomes])
    to_large = scores >= threshold
    return {
        "large_share": float(to_large.mean()),
        "quality": float(np.where(to_large, strong, weak).mean()),
        "all_large_quality": float(strong.mean()),
        "all_small_quality": float(weak.mean()),
    }


def _outcome_arrays(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    weak = np.array([o.small_score for o in corpus.outcomes])
    strong = np.array([o.large_score for o in corpus.outcomes])
    return weak, strong


def shipped_curve(
    scores: np.ndarray, val: Corpus, config: MultiSourceConfig, threshold: float
) -> OperatingCurve:
    """The operating curve on the shipped router's calibration split (its only held-out
    prompts), with the card's threshold as one of its points."""
    weak, strong = _outcome_arrays(val)
    data = (
        f"pooled validation split of seed {config.seeds[0]} ({len(val.labels)} prompts, "
        f"{config.val_fraction:.0%} of every source's question groups): held out from the "
        "fit; the calibration offset and the card's threshold were set on it too"
    )
    return OperatingCurve.measure(scores, weak, strong, data=data, include=(threshold,))


def train_shipped(
    corpus: Corpus, config: MultiSourceConfig
) -> tuple[DifficultyModel, dict, OperatingCurve]:
    """Fit on everything but seed `seeds[0]`'s validation split; calibrate on that split and
    measure the operating curve there."""
    parts = split_indices(corpus, config, config.seeds[0])
    fit_rows = np.sort(np.concatenate([parts["train"], parts["test"]]))
    val = corpus.take(parts["val"])
    model = with_calibration(fit_model(corpus.take(fit_rows), config.model), val)
    val_scores = score(model, val)
    weak, strong = _outcome_arrays(val)
    calibration = threshold_for_quality(
        val_scores, weak, strong, config.calibration.target_quality_share
    )
    calibration["per_source"] = {
        str(s): at_threshold(
            val_scores[val.sources == s],
            val.take(np.flatnonzero(val.sources == s)),
            calibration["threshold"],
        )
        for s in np.unique(val.sources)
    }
    return model, calibration, shipped_curve(val_scores, val, config, calibration["threshold"])


def write_operating_curve(config: MultiSourceConfig) -> OperatingCurve:
    """Measure the exported router's operating curve on its calibration split and write it
    into its card, without refitting: the weights and every other figure stay as they are.

    The split is recomputed from the config; the card's threshold must come out again on it,
    or the card was not exported from this config and data, and nothing is written.
    """
    out = Path(config.export_dir)
    card_path = out / ROUTER_CARD_FILE
    card = json.loads(card_path.read_text())
    model = DifficultyModel.load(out)
    corpus = build_corpus(config, embed=model.uses_embedding)
    val = corpus.take(split_indices(corpus, config, config.seeds[0])["val"])
    scores = score(model, val)
    weak, strong = _outcome_arrays(val)
    again = threshold_for_quality(scores, weak, strong, config.calibration.target_quality_share)
    recorded = card["calibration"]
    for key in ("threshold", "large_share", "quality", "num_prompts"):
        if not np.isclose(again[key], recorded[key], rtol=0, atol=1e-12):
            raise RuntimeError(
                f"{card_path}: its calibration {key} {recorded[key]} does not come out again "
                f"({again[key]}) on {config.export_dir}'s calibration split: the card was not "
                "exported from this config and data"
            )
    curve = shipped_curve(scores, val, config, card["threshold"])
    card[OPERATING_CURVE_KEY] = curve.to_card()
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return curve


def export(model: DifficultyModel, card: dict[str, Any], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out)
    (out / ROUTER_CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def run_multi_source(config: MultiSourceConfig) -> dict[str, Any]:
    from serve_app.routing.scorers import DifficultyScorer

    corpus = build_corpus(config)
    report: dict[str, Any] = {
        "config": config.model_dump(),
        "sources": {str(s): int((corpus.sources == s).sum()) for s in np.unique(corpus.sources)},
    }
    report["loso"] = loso(corpus, config)
    per_seed = in_distribution(corpus, config)
    report["in_distribution"] = {"per_seed": per_seed, "mean": mean_over_seeds(per_seed)}
    model, calibration, curve = train_shipped(corpus, config)
    card = {
        "kind": ROUTER_KIND,
        "embedding_model": config.model.embedding_model,
        "features": config.model.features,
        "label_rule": config.label_rule,
        "threshold": calibration["threshold"],
        "calibration": calibration,
        OPERATING_CURVE_KEY: curve.to_card(),
        "sources": report["sources"],
        "evaluation": summary_tables(report),
        "score_meaning": "P(the large tier does better than the small one); "
        "route large when >= threshold",
    }
    out = export(model, card, config.export_dir)
    # The serving scorer, given the cached embeddings, must give the evaluated scores.
    probe = corpus.take(np.arange(0, len(corpus.labels), max(1, len(corpus.labels) // 50)))
    served = DifficultyScorer(out).score_batch(probe.texts, probe.embeddings)
    if not np.allclose(served, score(model, probe), atol=1e-9):
        raise RuntimeError("the exported router does not reproduce the evaluated scores")
    report["export"] = {"dir": str(out), "card": card}
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (output / "summary.md").write_text(markdown_tables(report) + "\n")
    return report


# ---------------------------------------------------------------- reports


def summary_tables(report: dict[str, Any]) -> dict[str, Any]:
    """The router's LOSO and in-distribution metrics per source, and their means."""
    loso_rows = {s: e["metrics"]["router"] for s, e in report["loso"].items()}
    in_dist = {s: names["router"] for s, names in report["in_distribution"]["mean"].items()}

    def mean(rows: dict[str, dict]) -> dict[str, float]:
        return {k: float(np.mean([r[k] for r in rows.values()])) for k in METRIC_KEYS}

    return {
        "loso": loso_rows,
        "loso_mean": mean(loso_rows),
        "in_distribution": in_dist,
        "in_distribution_mean": mean(in_dist),
    }


def _fmt(m: dict[str, float | None]) -> str:
    auc = "–" if m.get("roc_auc") is None else f"{m['roc_auc']:.3f}"
    return f"{m['apgr']:.3f} / {m['cpt50_pct']:.1f}% / {auc}"


def _table(per_source: dict[str, dict[str, dict]], names: Sequence[str], sizes: dict) -> str:
    header = "| source | prompts | " + " | ".join(names) + " |"
    lines = [header, "| --- | ---: |" + " --- |" * len(names)]
    for source, metrics in per_source.items():
        lines.append(
            f"| {source} | {sizes[source]} | " + " | ".join(_fmt(metrics[n]) for n in names) + " |"
        )
    means = {
        n: {k: float(np.mean([per_source[s][n][k] for s in per_source])) for k in METRIC_KEYS}
        for n in names
    }
    lines.append("| **mean** | | " + " | ".join(f"**{_fmt(means[n])}**" for n in names) + " |")
    return "\n".join(lines)


def markdown_tables(report: dict[str, Any]) -> str:
    """(a) in distribution and (b) LOSO: APGR / CPT(50%) / ROC AUC per source, beside the
    baselines; (c) every variant's APGR, LOSO per source and both means."""
    names = ["router", "random", "length", "heuristic"]
    loso_metrics = {s: e["metrics"] for s, e in report["loso"].items()}
    in_dist = report["in_distribution"]["mean"]
    first_seed = next(iter(report["in_distribution"]["per_seed"].values()))
    variants = [n for n in next(iter(loso_metrics.values())) if n not in names[1:]]
    sources = list(loso_metrics)
    lines = [
        "| variant | " + " | ".join(sources) + " | LOSO mean | in-distribution mean |",
        "| --- |" + " ---: |" * (len(sources) + 2),
    ]
    for name in [*variants, *names[1:]]:
        loso_apgr = [loso_metrics[s][name]["apgr"] for s in sources]
        in_apgr = float(np.mean([in_dist[s][name]["apgr"] for s in in_dist]))
        lines.append(
            f"| {name} | "
            + " | ".join(f"{a:.3f}" for a in loso_apgr)
            + f" | {np.mean(loso_apgr):.3f} | {in_apgr:.3f} |"
        )
    return "\n\n".join(
        [
            "(a) In distribution (mean of seeds; cells: APGR / CPT(50%) / ROC AUC)",
            _table(in_dist, names, {s: e["prompts"] for s, e in first_seed.items()}),
            "(b) Leave one source out (cells: APGR / CPT(50%) / ROC AUC)",
            _table(loso_metrics, names, {s: e["prompts"] for s, e in report["loso"].items()}),
            "(c) APGR of every variant",
            "\n".join(lines),
        ]
    )
