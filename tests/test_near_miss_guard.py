"""The lexical check that stops a semantic cache hit on a question that only looks the same."""

from __future__ import annotations

import pytest

from serve_app.cache.near_miss_guard import rejection_reason

PARAPHRASES = [
    ("What is the capital of France?", "what's France's capital city?"),
    ("What is the capital of France?", "Tell me the capital of France."),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What are the benefits of exercise?", "What are the health benefits of exercising?"),
    ("How many legs does a spider have?", "how many legs do spiders have"),
]

NEAR_MISSES = [
    ("turn on the lights", "turn off the lights", "polarity"),
    (
        "Is it safe to mix bleach and vinegar?",
        "Is it unsafe to mix bleach and vinegar?",
        "polarity",
    ),
    (
        "How do I convert Celsius to Fahrenheit?",
        "How do I convert Fahrenheit to Celsius?",
        "direction",
    ),
    ("What is 2+2?", "What is 2+3?", "numbers"),
    ("Population of Paris in 2010", "Population of Paris in 2020", "numbers"),
    ("Who is the CEO of Apple?", "Who is the CEO of Microsoft?", "entities"),
    ("Can I drink coffee while pregnant?", "Can I not drink coffee while pregnant?", "negation"),
    ("Should I buy Tesla stock?", "Should I sell Tesla stock?", "polarity"),
    ("What is the largest planet?", "What is the smallest planet?", "polarity"),
]


@pytest.mark.parametrize(("query", "candidate"), PARAPHRASES)
def test_paraphrases_pass(query: str, candidate: str) -> None:
    assert rejection_reason(query, candidate) is None
    assert rejection_reason(candidate, query) is None


@pytest.mark.parametrize(("query", "candidate", "reason"), NEAR_MISSES)
def test_near_misses_are_rejected_both_ways(query: str, candidate: str, reason: str) -> None:
    assert rejection_reason(query, candidate) == reason
    assert rejection_reason(candidate, query) == reason
