"""The cache benchmark's labelled pair set (`benchmarks/data/cache_pairs.jsonl`).

Each pair is a question in the cache, a later question, whether the cached answer fits it
(`should_hit`), and its kind: paraphrases that should hit, near-misses that change the answer
in one detail and must not, and related or unrelated questions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from benchmarks.cache_options import PAIRS_PATH, BenchmarkError

PairKind = Literal[
    "paraphrase",
    "negation",
    "number",
    "entity",
    "direction",
    "polarity",
    "related_different",
    "unrelated",
]
PAIR_KINDS: tuple[PairKind, ...] = get_args(PairKind)
NEAR_MISS_KINDS: tuple[PairKind, ...] = ("negation", "number", "entity", "direction", "polarity")
"""Kinds whose should-not-hit pairs differ from the stored question in one detail that changes
the answer; the issue requires zero false hits on them at the chosen threshold."""


@dataclass(frozen=True)
class Pair:
    """A question in the cache, a later question, and whether the cached answer fits it."""

    stored: str
    asked: str
    should_hit: bool
    kind: PairKind


def load_pairs(path: Path = PAIRS_PATH) -> list[Pair]:
    pairs: list[Pair] = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            pairs.append(_parse_pair(line, f"{path}:{line_no}"))
    if not pairs:
        raise BenchmarkError(f"{path} holds no pairs")
    return pairs


def _parse_pair(line: str, where: str) -> Pair:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{where}: not JSON: {e}") from e
    expected = {"stored", "asked", "should_hit", "kind"}
    if not isinstance(data, dict) or set(data) != expected:
        raise BenchmarkError(f"{where}: expected exactly the keys {sorted(expected)}")
    if data["kind"] not in PAIR_KINDS:
        raise BenchmarkError(f"{where}: unknown kind {data['kind']!r}; known: {PAIR_KINDS}")
    if not isinstance(data["should_hit"], bool):
        raise BenchmarkError(f"{where}: should_hit must be true or false")
    if data["kind"] in ("paraphrase",) and not data["should_hit"]:
        raise BenchmarkError(f"{where}: a paraphrase pair must have should_hit true")
    if data["kind"] in ("related_different", "unrelated") and data["should_hit"]:
        raise BenchmarkError(f"{where}: a {data['kind']} pair must have should_hit false")
    if not all(isinstance(data[k], str) and data[k].strip() for k in ("stored", "asked")):
        raise BenchmarkError(f"{where}: stored and asked must be non-empty strings")
    return Pair(**data)


def first_of_each_group(pairs: Sequence[Pair], per_group: int) -> list[Pair]:
    """The first `per_group` pairs of each (kind, should_hit) group, in file order."""
    taken: dict[tuple[str, bool], int] = {}
    subset: list[Pair] = []
    for pair in pairs:
        group = (pair.kind, pair.should_hit)
        if taken.get(group, 0) < per_group:
            taken[group] = taken.get(group, 0) + 1
            subset.append(pair)
    return subset
