"""Lexical verification of a semantic cache candidate before it is served.

Sentence embeddings put "Is it safe to take ibuprofen with alcohol?" and "...unsafe..." at
cosine 0.99, and "convert Celsius to Fahrenheit" and its reverse at 0.995: no threshold
separates those from real paraphrases (~0.94). A wrong cached answer is far worse than a miss
(a miss costs one generation), so a candidate above the threshold must also agree with the
query on what paraphrases never change: numbers, negation, polarity words, named entities
and, when the content words are the same, their order.
"""

from __future__ import annotations

import re
from collections import Counter

_TOKEN = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor cannot without isn't aren't wasn't "
    "weren't don't doesn't didn't won't wouldn't can't couldn't shouldn't hasn't haven't".split()
)
# Words whose swap for their opposite keeps the sentence embedding almost unchanged.
_OPPOSITES = tuple(
    tuple(pair.split("/"))
    for pair in (
        "on/off up/down in/out increase/decrease before/after max/min maximum/minimum more/less "
        "open/close enable/disable start/stop add/remove buy/sell true/false above/below "
        "higher/lower first/last left/right import/export encrypt/decrypt encode/decode "
        "compress/decompress upload/download win/lose hot/cold fast/slow long/short big/small "
        "largest/smallest most/least best/worst pros/cons advantages/disadvantages north/south "
        "east/west push/pull lock/unlock legal/illegal possible/impossible inside/outside "
        "early/late earliest/latest young/old positive/negative accept/reject allow/deny "
        "include/exclude"
    ).split()
)
_OPPOSITE_OF = {a: b for a, b in _OPPOSITES} | {b: a for a, b in _OPPOSITES}
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")
_STOPWORDS = frozenset(
    "a an the is are was were be been being do does did of for to from with by at as and or "
    "what what's which who whom whose how why when where that this these those it its i me my "
    "you your we our they their he she his her can could would should will shall may might "
    "must please tell give explain describe about into than then there here s".split()
)


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _content_words(tokens: list[str]) -> list[str]:
    words = [t.lower().removesuffix("'s") for t in tokens]
    return [w for w in words if w not in _STOPWORDS]


def _numbers(text: str) -> Counter[str]:
    return Counter(n.replace(",", "") for n in _NUMBER.findall(text))


def _negation_parity(tokens: list[str]) -> int:
    lowered = [t.lower() for t in tokens]
    return sum(t in _NEGATIONS or t.endswith("n't") for t in lowered) % 2


def _has_polarity_flip(words_a: set[str], words_b: set[str]) -> bool:
    only_a, only_b = words_a - words_b, words_b - words_a
    for word in only_a:
        if _OPPOSITE_OF.get(word) in only_b:
            return True
        for prefix in _NEGATING_PREFIXES:
            if f"{prefix}{word}" in only_b or (
                word.startswith(prefix) and word.removeprefix(prefix) in only_b
            ):
                return True
    return False


def _entities(tokens: list[str]) -> set[str]:
    """Capitalised words not opening the text: names of people, places, products."""
    return {t.removesuffix("'s").lower() for t in tokens[1:] if t[:1].isupper() and len(t) > 1}


def _unmatched_entity(tokens: list[str], other_tokens: list[str]) -> bool:
    other_words = {t.lower().removesuffix("'s") for t in other_tokens}
    return bool(_entities(tokens) - other_words)


def rejection_reason(query: str, candidate: str) -> str | None:
    """Why `candidate` (a cached question) must not answer `query`, or None if it may."""
    if _numbers(query) != _numbers(candidate):
        return "numbers"
    tokens_q, tokens_c = _tokens(query), _tokens(candidate)
    if _negation_parity(tokens_q) != _negation_parity(tokens_c):
        return "negation"
    words_q, words_c = _content_words(tokens_q), _content_words(tokens_c)
    if _has_polarity_flip(set(words_q), set(words_c)):
        return "polarity"
    if _unmatched_entity(tokens_q, tokens_c) or _unmatched_entity(tokens_c, tokens_q):
        return "entities"
    if set(words_q) == set(words_c) and words_q != words_c:
        return "word_order"
    return None
