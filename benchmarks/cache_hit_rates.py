"""Cache benchmark part (b): hit and false-hit rates on the labelled pairs.

Every pair goes through `SemanticCache` with the real embedder and the Edge store, sweeping the
similarity threshold with and without the near-miss guard (`verify_candidates`);
`recommend_threshold` picks the threshold the measurements support.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.cache_options import BENCH_MODEL, BenchmarkError
from benchmarks.cache_pairs import NEAR_MISS_KINDS, Pair
from serve_app.cache.deployment import Embedder, SemanticCache, embedding_text
from serve_app.cache.keys import CacheKey, cache_key_for_request
from serve_app.cache.near_miss_guard import rejection_reason
from serve_app.config import CacheConfig


class MemoEmbedder:
    """The real embedder, asked once per distinct text.

    The sweep looks every question up ~40 times; embedding each once keeps part (b) to
    seconds. Records the embedder's own latency on the way.
    """

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._vectors: dict[str, list[float]] = {}
        self.latencies_ms: list[float] = []

    @property
    def dim(self) -> int:
        return self._embedder.dim

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray([self.embed(text) for text in texts], dtype=np.float32)

    def embed(self, text: str) -> list[float]:
        vector = self._vectors.get(text)
        if vector is None:
            started = time.perf_counter()
            vector = self._embedder.embed(text)
            self.latencies_ms.append((time.perf_counter() - started) * 1e3)
            self._vectors[text] = vector
        return vector


@dataclass(frozen=True)
class PairOutcome:
    """One pair under one setting: did the cache answer the asked question?"""

    pair: Pair
    cosine: float
    guard_reason: str | None
    """What the near-miss guard says about the pair, whatever the threshold."""
    hit: bool

    @property
    def false_hit(self) -> bool:
        return self.hit and not self.pair.should_hit

    @property
    def missed(self) -> bool:
        return self.pair.should_hit and not self.hit


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    verify_candidates: bool
    outcomes: tuple[PairOutcome, ...] = field(repr=False)

    @property
    def positives(self) -> int:
        return sum(o.pair.should_hit for o in self.outcomes)

    @property
    def hits(self) -> int:
        return sum(o.hit and o.pair.should_hit for o in self.outcomes)

    @property
    def negatives(self) -> int:
        return sum(not o.pair.should_hit for o in self.outcomes)

    @property
    def false_hits(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.false_hit]

    @property
    def near_miss_false_hits(self) -> list[PairOutcome]:
        return [o for o in self.false_hits if o.pair.kind in NEAR_MISS_KINDS]

    @property
    def missed(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.missed]

    def summary(self) -> dict[str, Any]:
        near_miss_negatives = sum(
            not o.pair.should_hit and o.pair.kind in NEAR_MISS_KINDS for o in self.outcomes
        )
        return {
            "threshold": self.threshold,
            "verify_candidates": self.verify_candidates,
            "positives": self.positives,
            "hits": self.hits,
            "hit_rate": _ratio(self.hits, self.positives),
            "negatives": self.negatives,
            "false_hits": len(self.false_hits),
            "false_hit_rate": _ratio(len(self.false_hits), self.negatives),
            "near_miss_negatives": near_miss_negatives,
            "near_miss_false_hits": len(self.near_miss_false_hits),
            "near_miss_false_hit_rate": _ratio(len(self.near_miss_false_hits), near_miss_negatives),
            "by_kind": self.by_kind(),
        }

    def by_kind(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            kind = counts.setdefault(
                o.pair.kind, {"positives": 0, "hits": 0, "negatives": 0, "false_hits": 0}
            )
            label = "positives" if o.pair.should_hit else "negatives"
            kind[label] += 1
            kind["hits" if o.pair.should_hit else "false_hits"] += o.hit
        return counts


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def evaluate_pairs(
    pairs: Sequence[Pair],
    embedder: Embedder,
    *,
    thresholds: Sequence[float],
    verify_options: Sequence[bool] = (False, True),
    progress: bool = False,
) -> list[SweepPoint]:
    """Store each pair's question, ask the other, through `SemanticCache`, per setting.

    Each pair gets its own tenant, hence its own partition: the labels are about the pair,
    so no other pair's question may answer it.
    """
    memo = embedder if isinstance(embedder, MemoEmbedder) else MemoEmbedder(embedder)
    # The cache embeds the normalised form of a question; so does this warm-up.
    texts = sorted({embedding_text(t) for pair in pairs for t in (pair.stored, pair.asked)})
    for text in tqdm(texts, desc="embed pair questions", disable=not progress, leave=False):
        memo.embed(text)
    settings = [(verify, threshold) for verify in verify_options for threshold in thresholds]
    return asyncio.run(_sweep(pairs, memo, settings, progress))


async def _sweep(
    pairs: Sequence[Pair],
    embedder: MemoEmbedder,
    settings: Sequence[tuple[bool, float]],
    progress: bool,
) -> list[SweepPoint]:
    cosines = [_cosine(embedder, pair.stored, pair.asked) for pair in pairs]
    guard = [rejection_reason(pair.asked, pair.stored) for pair in pairs]
    points: list[SweepPoint] = []
    for verify, threshold in tqdm(settings, desc="threshold sweep", disable=not progress):
        # A temporary shard (edge_path None): the default path is the operator's own cache.
        config = CacheConfig(
            similarity_threshold=threshold, verify_candidates=verify, edge_path=None
        )
        hits = await _hits_under(config, pairs, embedder)
        outcomes = tuple(
            PairOutcome(pair=pair, cosine=cosine, guard_reason=reason, hit=hit)
            for pair, cosine, reason, hit in zip(pairs, cosines, guard, hits, strict=True)
        )
        points.append(SweepPoint(threshold, verify, outcomes))
    return points


def _cosine(embedder: Embedder, stored: str, asked: str) -> float:
    """The similarity the cache compares to its threshold for this pair."""
    vectors = [embedder.embed(embedding_text(text)) for text in (stored, asked)]
    return float(np.dot(*vectors))


async def _hits_under(config: CacheConfig, pairs: Sequence[Pair], embedder: Embedder) -> list[bool]:
    cache = SemanticCache(config, embedder=embedder)
    try:
        for index, pair in enumerate(pairs):
            stored = await cache.store(
                _pair_key(pair.stored, index),
                answer_text=f"answer to: {pair.stored}",
                finish_reason="stop",
                prompt_tokens=12,
                completion_tokens=24,
                tier="small",
            )
            if not stored:
                raise BenchmarkError(f"the cache refused to store {pair.stored!r}")
        hits: list[bool] = []
        for index, pair in enumerate(pairs):
            lookup = await cache.lookup(_pair_key(pair.asked, index))
            # A failed lookup would count as a miss and flatter the false-hit rate.
            if lookup.kind not in ("exact", "semantic", "miss"):
                raise BenchmarkError(f"lookup of {pair.asked!r} returned {lookup.kind}")
            hits.append(lookup.kind != "miss")
        return hits
    finally:
        cache.close()


def _pair_key(question: str, index: int) -> CacheKey:
    body = {
        "model": BENCH_MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
    }
    key = cache_key_for_request(
        body,
        kind="chat",
        tenant=f"bench-pair-{index}",
        model=BENCH_MODEL,
        cache_nondeterministic=False,
    )
    if key is None:
        raise BenchmarkError(f"a plain temperature-0 chat request is not cacheable: {body}")
    return key


@dataclass(frozen=True)
class Recommendation:
    threshold: float | None
    verify_candidates: bool
    meets_requirement: bool
    """Zero false hits on the near-miss pairs; when no swept threshold manages that,
    `threshold` is the one with the fewest (then the most hits), and this is False."""
    reason: str


def recommend_threshold(points: Sequence[SweepPoint], *, verify_candidates: bool) -> Recommendation:
    """Most should-hit hits with zero near-miss false hits; ties go to the higher threshold.

    The higher of equally good thresholds leaves more margin to near-misses this set lacks.
    """
    candidates = sorted(
        (p for p in points if p.verify_candidates == verify_candidates),
        key=lambda p: p.threshold,
    )
    guard = "on" if verify_candidates else "off"
    if not candidates:
        return Recommendation(None, verify_candidates, False, f"no point swept with guard {guard}")
    safe = [p for p in candidates if not p.near_miss_false_hits]
    if not safe:
        fewest = min(candidates, key=lambda p: (len(p.near_miss_false_hits), -p.hits, -p.threshold))
        return Recommendation(
            fewest.threshold,
            verify_candidates,
            False,
            f"NO swept threshold has zero near-miss false hits with the guard {guard}; the "
            f"fewest is {len(fewest.near_miss_false_hits)} at {fewest.threshold:.2f} "
            f"({fewest.hits}/{fewest.positives} should-hit pairs hit)",
        )
    best = max(safe, key=lambda p: (p.hits, p.threshold))
    return Recommendation(best.threshold, verify_candidates, True, _why(best, candidates))


def _why(best: SweepPoint, candidates: Sequence[SweepPoint]) -> str:
    guard = "on" if best.verify_candidates else "off"
    reason = (
        f"{best.threshold:.2f} (guard {guard}) hits {best.hits}/{best.positives} should-hit "
        f"pairs ({best.hits / best.positives:.0%}), the most of any threshold with 0 false hits "
        f"on the {best.summary()['near_miss_negatives']} near-miss pairs"
    )
    lower = [p for p in candidates if p.threshold < best.threshold]
    if lower:
        below = lower[-1]
        reason += (
            f"; {below.threshold:.2f} would serve {len(below.near_miss_false_hits)} near-miss "
            "pair(s)"
            if below.near_miss_false_hits
            else f"; {below.threshold:.2f} hits no more ({below.hits})"
        )
    higher = [p for p in candidates if p.threshold > best.threshold]
    if higher:
        reason += f"; {higher[0].threshold:.2f} hits {higher[0].hits}"
    others = [o for o in best.false_hits if o.pair.kind not in NEAR_MISS_KINDS]
    if others:
        reason += f"; it still serves {len(others)} related-but-different pair(s)"
    return reason
