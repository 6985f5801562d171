"""The deterministic, model-free router: a logit from length, markers and notation. Ray-free;
re-exported by serve_app.routing.scorers, and read as a feature by the trained router
(serve_app.routing.difficulty)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


def _markers(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)


_REASONING = _markers(
    r"prove",
    r"proof",
    r"derive",
    r"derivation",
    r"show that",
    r"step[- ]by[- ]step",
    r"explain why",
    r"justify",
    r"implement\w*",
    r"algorithms?",
    r"calculate",
    r"compute",
    r"solve",
    r"evaluate",
    r"optimi[sz]e",
    r"complexity",
    r"determine",
    r"how many",
    r"find the",
    r"if and only if",
    r"implies",
    r"valid",
    r"statement 1",
)
_MATH_VOCAB = _markers(
    r"equations?",
    r"integrals?",
    r"derivatives?",
    r"polynomials?",
    r"matri(?:x|ces)",
    r"probability",
    r"theorem",
    r"integers?",
    r"primes?",
    r"modulo",
    r"logarithm",
    r"eigen\w*",
    r"vectors?",
    r"functions?",
    r"groups?",
    r"rings?",
    r"subgroups?",
    r"variance",
    r"regression",
    r"velocity",
    r"acceleration",
    r"molar",
    r"mass",
)
_CHIT_CHAT = _markers(
    r"hi",
    r"hello",
    r"hey",
    r"thanks",
    r"thank you",
    r"good (?:morning|afternoon|evening)",
    r"how are you",
    r"what is the capital",
    r"who (?:is|was|wrote)",
    r"translate",
    r"define",
    r"synonym",
    r"spell",
    r"joke",
)
_CODE = re.compile(
    r"```|^\s*(?:def|class|import|return|#include|public|function)\b|[;{}]\s*$",
    re.MULTILINE,
)
# "3x + 2 = 11", "2+2", "x^2", "n!": arithmetic between numbers/variables.
_EQUATION = re.compile(r"[\w)]\s*[-+*/^=<>≤≥×÷]\s*[\w(]|[∑∫√∂π∞≡⊃∨∧¬→↔]|\\frac|\\sum|\$")
_NUMBERED_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+", re.MULTILINE)


@dataclass(frozen=True)
class HeuristicWeights:
    """Logit contributions of the heuristic's signals; positive means "needs the large tier"."""

    bias: float = -1.0
    log2_length: float = 0.45
    """Per doubling of the word count above `reference_words` (halving: the negative)."""
    reference_words: float = 40.0
    reasoning_marker: float = 0.9
    math_vocab: float = 0.35
    equation: float = 0.35
    digit_density: float = 6.0
    """Per unit of digits/non-space characters: numeric problems are harder than prose."""
    code: float = 1.5
    extra_question: float = 0.5
    numbered_item: float = 0.3
    chit_chat: float = -1.5
    marker_cap: int = 3
    """Counts above this add nothing: repetition is not extra difficulty."""


class HeuristicScorer:
    """Deterministic, model-free estimate of P(needs the large tier).

    Each text gets a logit: a negative bias, plus
    - length: `log2(words / reference_words)`, clamped to [-3, 3] (long prompts are harder,
      one-liners easier);
    - reasoning markers ("prove", "derive", "step by step", "explain why", "implement",
      "algorithm", "calculate", "find the", "how many", ...), counted up to `marker_cap`;
    - math vocabulary ("equation", "integral", "probability", "group", ...) and
      equation-looking spans ("3x + 2 = 11", "x^2", LaTeX, logic symbols), each capped;
    - digit density (digits per non-space character): numeric problems are hard for small
      models;
    - code (fences, `def`/`class`/`#include` lines, lines ending in `;` `{` `}`);
    - multi-part requests: extra question marks and numbered/bulleted items;
    - chit-chat and simple look-ups ("hi", "thanks", "what is the capital", "translate",
      "define", ...) pushing the logit down.
    The logit goes through the logistic function, so the score lies in (0, 1) and 0.5 is the
    point where the signals for and against the large tier balance.
    """

    def __init__(self, weights: HeuristicWeights | None = None) -> None:
        self.weights = weights or HeuristicWeights()

    def score_batch(self, texts: list[str], embeddings: object = None) -> list[float]:
        """Scores of `texts`; `embeddings` (the Scorer protocol's) are not read."""
        return [_logistic(self.logit(text)) for text in texts]

    def logit(self, text: str) -> float:
        w = self.weights
        cap = w.marker_cap
        words = max(len(text.split()), 1)
        non_space_chars = max(sum(not c.isspace() for c in text), 1)
        digits = sum(c.isdigit() for c in text)
        length = max(-3.0, min(3.0, math.log2(words / w.reference_words)))
        return (
            w.bias
            + w.log2_length * length
            + w.reasoning_marker * min(len(_REASONING.findall(text)), cap)
            + w.math_vocab * min(len(_MATH_VOCAB.findall(text)), cap)
            + w.equation * min(len(_EQUATION.findall(text)), cap)
            + w.digit_density * digits / non_space_chars
            + w.code * bool(_CODE.search(text))
            + w.extra_question * min(max(text.count("?") - 1, 0), cap)
            + w.numbered_item * min(len(_NUMBERED_ITEM.findall(text)), cap)
            + w.chit_chat * min(len(_CHIT_CHAT.findall(text)), 2)
        )


def _logistic(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit))
