"""Cache benchmark parts (a) and (c): lookup latency of the stores, and through the ingress.

(a) times the vector stores alone (embedding excluded) on random unit vectors; (c) times a
cache miss and a cache hit end to end through a running HTTP ingress.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from tqdm import tqdm

from benchmarks.cache_options import BENCH_MODEL, BenchmarkError, BenchmarkOptions
from serve_app.cache.edge_store import EdgeCacheStore
from serve_app.cache.server_store import QdrantServerCacheStore
from serve_app.cache.store import CacheStore, StoredAnswer
from serve_app.config import CacheConfig

StoreName = Literal["edge", "qdrant-local"]
STORE_NAMES: tuple[StoreName, ...] = get_args(StoreName)

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
        search_p50_ms=percentile(search_ms, 50),
        search_p99_ms=percentile(search_ms, 99),
        search_mean_ms=float(np.mean(search_ms)),
        search_hit_fraction=hits / queries,
        exact_p50_ms=percentile(exact_ms, 50),
        exact_p99_ms=percentile(exact_ms, 99),
        upserts_per_s=upserts_per_s,
    )


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)


def synthetic_entry(index: int, partition: int) -> StoredAnswer:
    return StoredAnswer(
        partition=f"bench-partition-{partition}",
        exact_key=f"bench-entry-{index}",
        query_text=f"synthetic question {index}",
        tenant=f"bench-tenant-{partition}",
        model=BENCH_MODEL,
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
        vector, entry = vectors[index].tolist(), synthetic_entry(index, int(partition_of[index]))
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


def percentile(values: Sequence[float], q: float) -> float:
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
        miss_p50_ms=percentile(miss_ms, 50) if miss_ms else None,
        miss_p99_ms=percentile(miss_ms, 99) if miss_ms else None,
        hit_p50_ms=percentile(hit_ms, 50) if hit_ms else None,
        hit_p99_ms=percentile(hit_ms, 99) if hit_ms else None,
        first_call_cache=first,
        repeat_call_cache=repeat,
    )


def _timed_chat(client: Any, question: str) -> tuple[float, str]:
    body = {
        "model": BENCH_MODEL,
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
