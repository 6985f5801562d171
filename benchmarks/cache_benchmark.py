"""Semantic cache benchmark (issue 3): store latency, hit/false-hit rates, ingress hit vs miss.

Three parts, each printed as a table and written to one JSON file, plus two PNG plots:

a) Lookup latency of the vector stores alone (embedding excluded): Qdrant Edge embedded, and
   qdrant-client's local mode (the pure-Python baseline the embedded store replaces), at 1k,
   10k and 100k entries spread over partitions and searched inside one partition, as serving
   does. Also exact-path (`get_exact`) latency and one-at-a-time upsert throughput.
b) Hit rate and false-hit rate on the hand-labelled pairs in `benchmarks/data/cache_pairs.jsonl`,
   through `SemanticCache` with the real embedder and the Edge store, sweeping the similarity
   threshold with and without the near-miss guard (`verify_candidates`), and the threshold the
   measurements recommend.
c) End-to-end latency of a cache miss and of a cache hit through a running HTTP ingress (`--url`).

    nice -n 10 python -m benchmarks.cache_benchmark          # full run, a few minutes
    python -m benchmarks.cache_benchmark --quick             # smoke run
    python -m benchmarks.cache_benchmark --url http://127.0.0.1:8000

It prints figures and asserts nothing about timings: machines (and their neighbours) differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tqdm import tqdm

from serve_app.cache.deployment import (
    Embedder,
    SemanticCache,
    SentenceTransformerEmbedder,
    embedding_text,
)
from serve_app.cache.keys import CacheKey, cache_key_for_request
from serve_app.cache.near_miss_guard import rejection_reason
from serve_app.cache.store import CacheStore, EdgeCacheStore, QdrantServerCacheStore, StoredAnswer
from serve_app.config import CacheConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "cache_benchmark.json"

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

StoreName = Literal["edge", "qdrant-local"]
STORE_NAMES: tuple[StoreName, ...] = get_args(StoreName)

FULL_SIZES = (1_000, 10_000, 100_000)
FULL_THRESHOLDS = tuple(round(0.80 + 0.01 * step, 2) for step in range(19))  # 0.80 … 0.98
QUICK_THRESHOLDS = (0.85, 0.95)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2, the packaged embedder

# qdrant-client's local mode filters and scores every point in Python (~1 s per query at 100k
# entries here), so its query count shrinks with size to keep the run minutes long; the table
# shows how many queries each row timed.
_LOCAL_MODE_ENTRY_QUERIES = 500_000
_MIN_LOCAL_QUERIES = 10
_WARMUP_QUERIES = 3
# Half the latency queries are near-duplicates of a stored entry (cosine ≈ 0.95, a hit at the
# default threshold, so the payload is fetched too); half are random vectors (a miss).
_NEAR_DUPLICATE_NOISE = 0.33
_NOW_S = 1_000_000.0
_EXPIRES_AT_S = _NOW_S + 86_400.0

_BENCH_MODEL = "cascade"
_INGRESS_TOPICS = (
    "the boiling point of water at sea level",
    "the capital of Portugal",
    "a prime number",
    "photosynthesis",
    "the speed of sound in air",
    "compound interest",
    "a haiku",
    "the largest ocean on Earth",
)


class BenchmarkError(RuntimeError):
    """The benchmark could not measure what it claims to (a failed lookup, a bad pair file)."""


# ---- options ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkOptions:
    """What one run measures; `quick()` is the seconds-long smoke configuration."""

    sizes: tuple[int, ...] = FULL_SIZES
    """Store sizes (entries) at which lookup latency is measured; empty skips part (a)."""
    queries: int = 1000
    """Timed searches per size on the Edge store (local mode: fewer at large sizes)."""
    partitions: int = 50
    """Partitions the entries are spread over; every search is filtered to one."""
    dim: int = EMBEDDING_DIM
    """Vector dimension of the latency part (the packaged embedder's)."""
    thresholds: tuple[float, ...] = FULL_THRESHOLDS
    """Similarity thresholds swept on the pair set; the configured default is always added."""
    evaluate_pairs: bool = True
    """Run part (b), which loads the embedding model."""
    pairs_path: Path = PAIRS_PATH
    pairs_per_group: int | None = None
    """Evaluate only the first N pairs of each (kind, label) group; None means all."""
    url: str | None = None
    """Base URL of a running cascade (part c); None skips it."""
    repetitions: int = 20
    """Unique questions sent through the ingress, each once (miss) and again (hit)."""
    api_key: str = "cache-benchmark"
    store_wait_s: float = 0.5
    """Pause between a miss and its repeat: the ingress stores the answer after replying."""
    request_timeout_s: float = 180.0
    seed: int = 0
    out: Path = DEFAULT_OUT
    """JSON report; the plots are written beside it (`<stem>_thresholds.png`, ...)."""
    plot: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if any(size <= 0 for size in self.sizes):
            raise ValueError(f"sizes must be positive, got {self.sizes}")
        if self.queries <= 0 or self.partitions <= 0 or self.dim <= 0:
            raise ValueError("queries, partitions and dim must be positive")
        if any(not 0 < t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be in (0, 1], got {self.thresholds}")
        if self.pairs_per_group is not None and self.pairs_per_group <= 0:
            raise ValueError("pairs_per_group must be positive")
        if self.repetitions <= 0:
            raise ValueError("repetitions must be positive")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchmarkOptions:
        settings: dict[str, Any] = {
            "sizes": (1_000,),
            "queries": 30,
            "thresholds": QUICK_THRESHOLDS,
            "pairs_per_group": 3,
            "repetitions": 3,
        }
        return cls(**(settings | overrides))

    def swept_thresholds(self) -> list[float]:
        return sorted({*self.thresholds, CacheConfig().similarity_threshold})


# ---- (a) store lookup latency -----------------------------------------------------------


@dataclass(frozen=True)
class LatencyResult:
    store: StoreName
    entries: int
    partitions: int
    dim: int
    queries: int
    search_p50_ms: float
    search_p99_ms: float
    search_mean_ms: float
    search_hit_fraction: float
    exact_p50_ms: float
    exact_p99_ms: float
    upserts_per_s: float


def open_store(name: StoreName, dim: int) -> CacheStore:
    if name == "edge":
        return EdgeCacheStore(None, dim)
    return QdrantServerCacheStore(":memory:", None, collection="cache_benchmark", dim=dim)


def queries_for(name: StoreName, entries: int, queries: int) -> int:
    if name == "edge":
        return queries
    return max(_MIN_LOCAL_QUERIES, min(queries, _LOCAL_MODE_ENTRY_QUERIES // entries))


def measure_store_latency(
    name: StoreName,
    entries: int,
    *,
    queries: int,
    partitions: int,
    dim: int,
    threshold: float,
    rng: np.random.Generator,
    progress: bool = False,
) -> LatencyResult:
    """Load `entries` random unit vectors into a fresh store, then time its lookups."""
    vectors = _unit_rows(rng.standard_normal((entries, dim), dtype=np.float32))
    partition_of = rng.integers(partitions, size=entries)
    store = open_store(name, dim)
    try:
        upserts_per_s = _load(store, vectors, partition_of, f"{name} load {entries:,}", progress)
        targets = rng.integers(entries, size=queries + _WARMUP_QUERIES)
        search_ms, hits = _time_searches(
            store, vectors, partition_of, targets, threshold, rng, f"{name} search", progress
        )
        exact_ms = _time_exact(store, targets)
    finally:
        store.close()
    return LatencyResult(
        store=name,
        entries=entries,
        partitions=partitions,
        dim=dim,
        queries=queries,
        search_p50_ms=_percentile(search_ms, 50),
        search_p99_ms=_percentile(search_ms, 99),
        search_mean_ms=float(np.mean(search_ms)),
        search_hit_fraction=hits / queries,
        exact_p50_ms=_percentile(exact_ms, 50),
        exact_p99_ms=_percentile(exact_ms, 99),
        upserts_per_s=upserts_per_s,
    )


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def _synthetic_entry(index: int, partition: int) -> StoredAnswer:
    return StoredAnswer(
        partition=f"bench-partition-{partition}",
        exact_key=f"bench-entry-{index}",
        query_text=f"synthetic question {index}",
        tenant=f"bench-tenant-{partition}",
        model=_BENCH_MODEL,
        answer_text=f"synthetic answer {index}",
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=24,
        tier="small",
        created_at_s=_NOW_S,
        expires_at_s=_EXPIRES_AT_S,
    )


def _load(
    store: CacheStore,
    vectors: np.ndarray,
    partition_of: np.ndarray,
    label: str,
    progress: bool,
) -> float:
    """Upsert one entry at a time, as the cache does; returns upserts per second."""
    upsert_s = 0.0
    for index in tqdm(range(len(vectors)), desc=label, disable=not progress, leave=False):
        vector, entry = vectors[index].tolist(), _synthetic_entry(index, int(partition_of[index]))
        started = time.perf_counter()
        store.upsert(vector, entry)
        upsert_s += time.perf_counter() - started
    return len(vectors) / upsert_s


def _time_searches(
    store: CacheStore,
    vectors: np.ndarray,
    partition_of: np.ndarray,
    targets: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    label: str,
    progress: bool,
) -> tuple[list[float], int]:
    """Latencies (ms) of searches after the warm-up ones, and how many found an entry."""
    dim = vectors.shape[1]
    latencies_ms: list[float] = []
    hits = 0
    for number, target in enumerate(tqdm(targets, desc=label, disable=not progress, leave=False)):
        noise = rng.standard_normal(dim, dtype=np.float32) / np.sqrt(dim)
        if number % 2 == 0:
            query = _unit_rows(vectors[target] + _NEAR_DUPLICATE_NOISE * noise)
        else:
            query = _unit_rows(noise)
        partition = f"bench-partition-{int(partition_of[target])}"
        started = time.perf_counter()
        found = store.search(query.tolist(), partition=partition, threshold=threshold, now_s=_NOW_S)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if number >= _WARMUP_QUERIES:
            latencies_ms.append(elapsed_ms)
            hits += found is not None
    return latencies_ms, hits


def _time_exact(store: CacheStore, targets: np.ndarray) -> list[float]:
    latencies_ms: list[float] = []
    for number, target in enumerate(targets):
        started = time.perf_counter()
        found = store.get_exact(f"bench-entry-{int(target)}", now_s=_NOW_S)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if found is None:
            raise BenchmarkError(f"exact lookup of stored entry {target} found nothing")
        if number >= _WARMUP_QUERIES:
            latencies_ms.append(elapsed_ms)
    return latencies_ms


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_latency(options: BenchmarkOptions) -> list[LatencyResult]:
    rng = np.random.default_rng(options.seed)
    threshold = CacheConfig().similarity_threshold
    results: list[LatencyResult] = []
    for entries in options.sizes:
        for name in STORE_NAMES:
            results.append(
                measure_store_latency(
                    name,
                    entries,
                    queries=queries_for(name, entries, options.queries),
                    partitions=options.partitions,
                    dim=options.dim,
                    threshold=threshold,
                    rng=rng,
                    progress=options.progress,
                )
            )
    return results


# ---- (b) hit and false-hit rates on the labelled pairs ---------------------------------


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
        config = CacheConfig(similarity_threshold=threshold, verify_candidates=verify)
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
        "model": _BENCH_MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
    }
    key = cache_key_for_request(
        body,
        kind="chat",
        tenant=f"bench-pair-{index}",
        model=_BENCH_MODEL,
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


# ---- (c) end-to-end latency through the HTTP ingress ------------------------------------


@dataclass(frozen=True)
class IngressResult:
    url: str
    repetitions: int
    miss_p50_ms: float | None
    miss_p99_ms: float | None
    hit_p50_ms: float | None
    hit_p99_ms: float | None
    first_call_cache: dict[str, int]
    """`x-cascade-cache` of each first call (expected: miss)."""
    repeat_call_cache: dict[str, int]
    """`x-cascade-cache` of each repeated call (expected: hit)."""


def measure_ingress(options: BenchmarkOptions) -> IngressResult:
    """Each unique question twice: the first is a miss, the repeat an exact-path hit."""
    import httpx

    assert options.url is not None
    run_id = uuid.uuid4().hex[:8]
    miss_ms: list[float] = []
    hit_ms: list[float] = []
    first: dict[str, int] = {}
    repeat: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {options.api_key}"}
    with httpx.Client(
        base_url=options.url, timeout=options.request_timeout_s, headers=headers
    ) as client:
        # The first request of a fresh stack compiles and warms up; it is not a measurement.
        _timed_chat(client, f"Say hello. (cache benchmark {run_id} warm-up)")
        for number in tqdm(
            range(options.repetitions), desc="ingress", disable=not options.progress
        ):
            topic = _INGRESS_TOPICS[number % len(_INGRESS_TOPICS)]
            question = f"In one sentence, what is {topic}? (cache benchmark {run_id}-{number})"
            elapsed_ms, cache = _timed_chat(client, question)
            first[cache] = first.get(cache, 0) + 1
            if cache == "miss":
                miss_ms.append(elapsed_ms)
            time.sleep(options.store_wait_s)
            elapsed_ms, cache = _timed_chat(client, question)
            repeat[cache] = repeat.get(cache, 0) + 1
            if cache == "hit":
                hit_ms.append(elapsed_ms)
    return IngressResult(
        url=options.url,
        repetitions=options.repetitions,
        miss_p50_ms=_percentile(miss_ms, 50) if miss_ms else None,
        miss_p99_ms=_percentile(miss_ms, 99) if miss_ms else None,
        hit_p50_ms=_percentile(hit_ms, 50) if hit_ms else None,
        hit_p99_ms=_percentile(hit_ms, 99) if hit_ms else None,
        first_call_cache=first,
        repeat_call_cache=repeat,
    )


def _timed_chat(client: Any, question: str) -> tuple[float, str]:
    body = {
        "model": _BENCH_MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": 32,
    }
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    if response.status_code != 200:
        raise BenchmarkError(f"ingress answered {response.status_code}: {response.text[:500]}")
    return elapsed_ms, response.headers.get("x-cascade-cache", "absent")


# ---- the run ----------------------------------------------------------------------------


def run_benchmark(options: BenchmarkOptions, *, embedder: Embedder | None = None) -> dict[str, Any]:
    """Run every part `options` selects; returns the report that is written as JSON."""
    report: dict[str, Any] = {
        "generated_at_unix_s": time.time(),
        "machine": _machine(),
        "options": {
            **asdict(options),
            "pairs_path": str(options.pairs_path),
            "out": str(options.out),
        },
        "configured_default": {
            "similarity_threshold": CacheConfig().similarity_threshold,
            "verify_candidates": CacheConfig().verify_candidates,
        },
    }
    latency = run_latency(options) if options.sizes else []
    report["store_latency"] = [asdict(result) for result in latency]
    report["pairs"] = _pairs_report(options, embedder) if options.evaluate_pairs else None
    if options.url is None:
        report["ingress"] = {"skipped": "no --url given"}
    else:
        report["ingress"] = asdict(measure_ingress(options))
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["machine"]["torch_threads"] = _machine()["torch_threads"]
    return report


def _pairs_report(options: BenchmarkOptions, embedder: Embedder | None) -> dict[str, Any]:
    all_pairs = load_pairs(options.pairs_path)
    pairs = (
        first_of_each_group(all_pairs, options.pairs_per_group)
        if options.pairs_per_group
        else all_pairs
    )
    if embedder is None:
        embedder = SentenceTransformerEmbedder(CacheConfig().embedding_model)
    memo = MemoEmbedder(embedder)
    points = evaluate_pairs(
        pairs, memo, thresholds=options.swept_thresholds(), progress=options.progress
    )
    recommended = recommend_threshold(points, verify_candidates=True)
    without_guard = recommend_threshold(points, verify_candidates=False)
    chosen = next(
        (p for p in points if p.verify_candidates and p.threshold == recommended.threshold), None
    )
    return {
        "path": str(options.pairs_path),
        "evaluated": len(pairs),
        "in_file": len(all_pairs),
        "counts": _pair_counts(pairs),
        "embedding_p50_ms": _percentile(memo.latencies_ms, 50),
        "embedding_p99_ms": _percentile(memo.latencies_ms, 99),
        "sweep": [point.summary() for point in points],
        "recommended": asdict(recommended),
        "recommended_without_guard": asdict(without_guard),
        "at_recommended": _details(chosen) if chosen else None,
        "pairs": [_pair_detail(o) for o in points[0].outcomes],
    }


def _pair_counts(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        kind = counts.setdefault(pair.kind, {"should_hit": 0, "should_not_hit": 0})
        kind["should_hit" if pair.should_hit else "should_not_hit"] += 1
    return counts


def _pair_detail(outcome: PairOutcome) -> dict[str, Any]:
    return {
        **asdict(outcome.pair),
        "cosine": round(outcome.cosine, 4),
        "guard_reason": outcome.guard_reason,
    }


def _details(point: SweepPoint) -> dict[str, Any]:
    return {
        "threshold": point.threshold,
        "false_hits": [_pair_detail(o) for o in point.false_hits],
        "missed": [_pair_detail(o) for o in point.missed],
    }


def _machine() -> dict[str, Any]:
    versions = {}
    for dist in ("qdrant-edge-py", "qdrant-client", "sentence-transformers", "torch"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    torch = sys.modules.get("torch")  # loaded by the embedder, if part (b) runs
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "loadavg_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "versions": versions,
    }


# ---- output ------------------------------------------------------------------------------


def format_report(report: dict[str, Any]) -> str:
    sections = [_format_machine(report)]
    if report["store_latency"]:
        sections.append(_format_latency(report["store_latency"]))
    if report["pairs"] is not None:
        sections.append(_format_pairs(report["pairs"], report["configured_default"]))
    sections.append(_format_ingress(report["ingress"]))
    return "\n\n".join(sections)


def _format_machine(report: dict[str, Any]) -> str:
    machine = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in machine["loadavg_at_start"])
    return f"Machine: {machine['cpus']} CPUs, load average at start {load}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _format_latency(rows: Sequence[dict[str, Any]]) -> str:
    table = _table(
        [
            "store",
            "entries",
            "queries",
            "search p50 ms",
            "search p99 ms",
            "hit frac",
            "exact p50 ms",
            "exact p99 ms",
            "upserts/s",
        ],
        [
            [
                r["store"],
                r["entries"],
                r["queries"],
                r["search_p50_ms"],
                r["search_p99_ms"],
                r["search_hit_fraction"],
                r["exact_p50_ms"],
                r["exact_p99_ms"],
                r["upserts_per_s"],
            ]
            for r in rows
        ],
    )
    partitions, dim = rows[0]["partitions"], rows[0]["dim"]
    return (
        f"(a) Store lookup latency, embedding excluded: {dim}-d random unit vectors over "
        f"{partitions} partitions, top-1 filtered by partition; half the queries near-duplicates "
        "(hits), half random (misses).\n    qdrant-local (qdrant-client local mode) scans every "
        "point in Python, so it times fewer queries at large sizes (see 'queries').\n" + table
    )


def _format_pairs(pairs: dict[str, Any], default: dict[str, Any]) -> str:
    sweep = pairs["sweep"]
    rows = []
    for off, on in zip(
        [p for p in sweep if not p["verify_candidates"]],
        [p for p in sweep if p["verify_candidates"]],
        strict=True,
    ):
        rows.append(
            [
                f"{on['threshold']:.2f}",
                _rate(off, "hits", "positives"),
                _rate(off, "near_miss_false_hits", "near_miss_negatives"),
                _rate(off, "false_hits", "negatives"),
                _rate(on, "hits", "positives"),
                _rate(on, "near_miss_false_hits", "near_miss_negatives"),
                _rate(on, "false_hits", "negatives"),
            ]
        )
    sweep_table = _table(
        [
            "threshold",
            "hit (no guard)",
            "near-miss FH",
            "all FH",
            "hit (guard)",
            "near-miss FH",
            "all FH",
        ],
        rows,
    )
    recommended = pairs["recommended"]
    lines = [
        f"(b) Pairs: {pairs['evaluated']} of {pairs['in_file']} in {pairs['path']}; embedding "
        f"p50 {pairs['embedding_p50_ms']:.1f} ms, p99 {pairs['embedding_p99_ms']:.1f} ms. "
        "FH = false hits (should not hit, did).",
        sweep_table,
        "",
        _format_by_kind(pairs, recommended["threshold"]),
        "",
        f"Configured default: threshold {default['similarity_threshold']:.2f}, "
        f"verify_candidates={default['verify_candidates']}.",
        f"Recommended threshold: {recommended['reason']}.",
        f"Without the guard: {pairs['recommended_without_guard']['reason']}.",
    ]
    details = pairs["at_recommended"]
    if details is not None:
        at = f"{details['threshold']:.2f} with the guard"
        lines.append(_format_pair_list(f"False hits at {at}", details["false_hits"]))
        lines.append(_format_pair_list(f"Should-hit pairs that miss at {at}", details["missed"]))
    return "\n".join(lines)


def _rate(point: dict[str, Any], part: str, whole: str) -> str:
    if not point[whole]:
        return "-"
    return f"{point[part]}/{point[whole]} ({point[part] / point[whole]:.0%})"


def _format_by_kind(pairs: dict[str, Any], threshold: float | None) -> str:
    if threshold is None:
        return "No recommended threshold: no per-kind table."
    cosines: dict[tuple[str, bool], list[float]] = {}
    for pair in pairs["pairs"]:
        cosines.setdefault((pair["kind"], pair["should_hit"]), []).append(pair["cosine"])
    points = {p["verify_candidates"]: p for p in pairs["sweep"] if p["threshold"] == threshold}
    rows = []
    for kind in PAIR_KINDS:
        for should_hit in (True, False):
            values = cosines.get((kind, should_hit))
            if not values:
                continue
            counts_off = points[False]["by_kind"][kind]
            counts_on = points[True]["by_kind"][kind]
            field_name = "hits" if should_hit else "false_hits"
            whole = "positives" if should_hit else "negatives"
            rows.append(
                [
                    kind,
                    "hit" if should_hit else "no hit",
                    len(values),
                    f"{min(values):.3f}",
                    f"{float(np.median(values)):.3f}",
                    f"{max(values):.3f}",
                    f"{counts_off[field_name]}/{counts_off[whole]}",
                    f"{counts_on[field_name]}/{counts_on[whole]}",
                ]
            )
    table = _table(
        ["kind", "label", "pairs", "cos min", "cos p50", "cos max", "no guard", "guard"], rows
    )
    return f"Per kind at {threshold:.2f} (hits; false hits on 'no hit' rows):\n{table}"


def _format_pair_list(title: str, pairs: Sequence[dict[str, Any]]) -> str:
    if not pairs:
        return f"{title}: none."
    lines = [f"{title} ({len(pairs)}):"]
    for p in pairs:
        guard = f", guard: {p['guard_reason']}" if p["guard_reason"] else ""
        tag = f"[{p['kind']}, cos {p['cosine']:.3f}{guard}]"
        lines.append(f"  {tag} {p['stored']!r} -> {p['asked']!r}")
    return "\n".join(lines)


def _format_ingress(ingress: dict[str, Any]) -> str:
    if "skipped" in ingress:
        return f"(c) End-to-end through the ingress: skipped ({ingress['skipped']})."
    table = _table(
        ["call", "p50 ms", "p99 ms", "x-cascade-cache"],
        [
            [
                "first (miss)",
                ingress["miss_p50_ms"],
                ingress["miss_p99_ms"],
                ingress["first_call_cache"],
            ],
            [
                "repeat (hit)",
                ingress["hit_p50_ms"],
                ingress["hit_p99_ms"],
                ingress["repeat_call_cache"],
            ],
        ],
    )
    return (
        f"(c) End-to-end through {ingress['url']}: {ingress['repetitions']} unique questions, "
        "each asked twice (latency over calls whose header matched).\n" + table
    )


def plot_report(report: dict[str, Any], out: Path) -> list[Path]:
    """Threshold sweep and store latency as PNGs beside the JSON report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    if report["pairs"] is not None:
        path = out.with_name(f"{out.stem}_thresholds.png")
        _plot_sweep(plt, report["pairs"], report["configured_default"], path)
        written.append(path)
    if report["store_latency"]:
        path = out.with_name(f"{out.stem}_latency.png")
        _plot_latency(plt, report["store_latency"], path)
        written.append(path)
    return written


def _plot_sweep(plt: Any, pairs: dict[str, Any], default: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(12, 5.5))
    series = [
        ("hit rate (should hit)", "hit_rate", "tab:green"),
        ("false-hit rate, near-miss kinds", "near_miss_false_hit_rate", "tab:red"),
        ("false-hit rate, all should-not-hit", "false_hit_rate", "tab:orange"),
    ]
    for verify, style in ((False, "--"), (True, "-")):
        points = [p for p in pairs["sweep"] if p["verify_candidates"] == verify]
        thresholds = [p["threshold"] for p in points]
        for label, key, color in series:
            guard = "guard on" if verify else "guard off"
            values = [p[key] or 0.0 for p in points]
            ax.plot(thresholds, values, style, color=color, marker=".", label=f"{label} ({guard})")
    recommended = pairs["recommended"]["threshold"]
    if recommended is not None:
        label = f"recommended {recommended:.2f}"
        ax.axvline(recommended, color="black", linestyle=":", label=label)
    ax.axvline(
        default["similarity_threshold"],
        color="grey",
        linestyle="-.",
        alpha=0.6,
        label=f"configured default {default['similarity_threshold']:.2f}",
    )
    ax.set_xlabel("cosine similarity threshold")
    ax.set_ylabel("fraction of pairs")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Semantic cache on {pairs['evaluated']} labelled pairs (all-MiniLM-L6-v2)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_latency(plt: Any, rows: Sequence[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in zip(STORE_NAMES, ("tab:blue", "tab:purple"), strict=True):
        mine = [r for r in rows if r["store"] == name]
        sizes = [r["entries"] for r in mine]
        ax.plot(sizes, [r["search_p50_ms"] for r in mine], "-o", color=color, label=f"{name} p50")
        ax.plot(sizes, [r["search_p99_ms"] for r in mine], "--x", color=color, label=f"{name} p99")
    ax.axhline(2.0, color="grey", linestyle=":", label="target p50 2 ms (Edge, 100k)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("entries in the store")
    ax.set_ylabel("semantic search latency (ms)")
    ax.set_title("Filtered top-1 search, embedding excluded")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ---- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cache_benchmark",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1k entries, few queries, 3 pairs per group, 3 thresholds",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=None,
        help=f"store sizes for part (a); none skips it (default {FULL_SIZES})",
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=None,
        help="timed searches per size on the Edge store (default 1000, quick 30)",
    )
    parser.add_argument(
        "--partitions", type=int, default=50, help="partitions of part (a) (%(default)s)"
    )
    parser.add_argument(
        "--dim", type=int, default=EMBEDDING_DIM, help="vector size of part (a) (%(default)s)"
    )
    parser.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="thresholds swept on the pairs (default 0.80 … 0.98)",
    )
    parser.add_argument("--skip-pairs", action="store_true", help="skip part (b)")
    parser.add_argument(
        "--pairs",
        type=Path,
        default=PAIRS_PATH,
        help="labelled pair file (benchmarks/data/cache_pairs.jsonl)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="base URL of a running cascade, e.g. http://127.0.0.1:8000 (part c)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="unique questions sent twice through the ingress (default 20)",
    )
    parser.add_argument(
        "--api-key",
        default="cache-benchmark",
        help="bearer token sent to the ingress; it names the tenant (%(default)s)",
    )
    parser.add_argument(
        "--store-wait-s",
        type=float,
        default=0.5,
        help="pause between a miss and its repeat, the store being asynchronous (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON report path; PNGs go beside it (%(default)s)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the embedder (%(default)s); two threads on a busy 2-core "
        "box spin against each other: 1.3 s per embedding instead of 0.17 s, measured",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> BenchmarkOptions:
    given: dict[str, Any] = {
        "partitions": args.partitions,
        "dim": args.dim,
        "evaluate_pairs": not args.skip_pairs,
        "pairs_path": args.pairs,
        "url": args.url,
        "api_key": args.api_key,
        "store_wait_s": args.store_wait_s,
        "seed": args.seed,
        "out": args.out,
        "plot": not args.no_plot,
        "progress": not args.no_progress,
    }
    optional = {
        "sizes": tuple(args.sizes) if args.sizes is not None else None,
        "queries": args.queries,
        "thresholds": tuple(args.thresholds) if args.thresholds else None,
        "repetitions": args.repetitions,
    }
    given |= {name: value for name, value in optional.items() if value is not None}
    return BenchmarkOptions.quick(**given) if args.quick else BenchmarkOptions(**given)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = options_from_args(args)
    if options.evaluate_pairs:
        import torch

        torch.set_num_threads(args.torch_threads)
    report = run_benchmark(options)
    write_report(report, options.out)
    print(format_report(report))
    written = [options.out]
    if options.plot:
        written += plot_report(report, options.out)
    print("\nWrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
