"""Lexical verification of a semantic cache candidate before it is served.

Sentence embeddings put "Is it safe to take ibuprofen with alcohol?" and "...unsafe..." at
cosine 0.99, and "convert Celsius to Fahrenheit" and its reverse at 0.995: no threshold
separates those from real paraphrases (~0.94). A wrong cached answer is far worse than a miss
(a miss costs one generation), so a candidate above the threshold must also agree with the
query on what paraphrases never change: numbers, negation, polarity words, named entities
and the direction between two things ("Celsius to Fahrenheit" is not the reverse).
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
        "include/exclude good/bad better/worse safe/dangerous safer/riskier raise/lower "
        "raising/lowering open/closed opening/closing cheap/expensive cheapest/priciest "
        "gain/lose gained/lost strong/weak rich/poor heavy/light hard/easy difficult/easy "
        "full/empty wet/dry high/low wide/narrow thick/thin day/night summer/winter "
        "spring/autumn male/female men/women boy/girl husband/wife borrow/lend buy/rent "
        "credit/debit profit/loss ascending/descending uppercase/lowercase "
        "horizontal/vertical past/future yesterday/tomorrow previous/next sunrise/sunset "
        "morning/evening deposit/withdraw send/receive input/output client/server "
        "allowed/forbidden arrive/depart arrival/departure enter/exit entry/exit "
        "healthy/unhealthy love/hate success/failure pass/fail light/dark white/black "
        "asleep/awake alive/dead married/single same/different all/none"
    ).split()
)
_OPPOSITES_OF: dict[str, set[str]] = {}
for _a, _b in _OPPOSITES:
    _OPPOSITES_OF.setdefault(_a, set()).add(_b)
    _OPPOSITES_OF.setdefault(_b, set()).add(_a)
# Words that give an order to the things around them: "A to B" is not "B to A".
_DIRECTIONAL = frozenset("to into from in than vs versus before after over".split())
# "list in Python" = "Python list": `in` pairs count only when both questions use them.
_WEAK_DIRECTIONAL = frozenset({"in"})
# "A north of B", "A left of B": `of` orders its neighbours only after one of these.
_RELATIONAL = frozenset("north south east west left right above below ahead behind".split())
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
        if _OPPOSITES_OF.get(word, set()) & only_b:
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
    if _reversed_direction(tokens_q, words_c) or _reversed_direction(tokens_c, words_q):
        return "direction"
    if _swapped_around_in(tokens_q, tokens_c) or _swapped_around_in(tokens_c, tokens_q):
        return "direction"
    return None


def _swapped_around_in(tokens: list[str], other_tokens: list[str]) -> bool:
    """ "dollars in euros" vs "euros in dollars"; "in Tokyo ... in London" vs the reverse."""
    words = [t.lower() for t in tokens]
    other = [t.lower() for t in other_tokens]
    first = {word: i for i, word in reversed(list(enumerate(other)))}
    for a, b in _directed_pairs(tokens):
        ia, ib = first.get(a), first.get(b)
        if ia is not None and ib is not None and ib < ia and "in" in other[ib + 1 : ia]:
            return True
    objects, other_objects = _objects_of_in(words), _objects_of_in(other)
    return len(objects) > 1 and sorted(objects) == sorted(other_objects) != objects


def _objects_of_in(words: list[str]) -> list[str]:
    return [
        next((w for w in words[i + 1 :] if w not in _STOPWORDS), "")
        for i, word in enumerate(words)
        if word == "in"
    ]


def _directed_pairs(tokens: list[str], *, weak: bool = True) -> list[tuple[str, str]]:
    """(a, b) around each directional word: "Celsius to Fahrenheit" -> (celsius, fahrenheit)."""
    words = [t.lower().removesuffix("'s") for t in tokens]
    pairs = []
    for i, word in enumerate(words):
        relational_of = word == "of" and i > 0 and words[i - 1] in _RELATIONAL
        if (word not in _DIRECTIONAL and not relational_of) or (
            not weak and word in _WEAK_DIRECTIONAL
        ):
            continue
        head = words[: i - 1] if relational_of else words[:i]
        before = next((w for w in reversed(head) if w not in _STOPWORDS), None)
        after = next((w for w in words[i + 1 :] if w not in _STOPWORDS), None)
        if before and after and before != after:
            pairs.append((before, after))
    return pairs


def _reversed_direction(tokens: list[str], other_words: list[str]) -> bool:
    """The other question names the same two things in the opposite order."""
    position = {word: i for i, word in reversed(list(enumerate(other_words)))}
    return any(
        a in position and b in position and position[b] < position[a]
        for a, b in _directed_pairs(tokens, weak=False)
    )
