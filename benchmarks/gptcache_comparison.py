"""Our semantic cache against GPTCache (issue 18, part 2): hits, near-miss false hits, latency.

Both caches embed with the same model, the packaged ONNX int8 all-MiniLM-L6-v2
(`CacheConfig().embedding_model`), asked once per distinct text (`MemoEmbedder`), so neither
side's figures include the embedder; its own latency is reported beside them.

- **Ours, as shipped**: `SemanticCache` with `CacheConfig()` (threshold 0.92, near-miss guard
  on) over an Edge store in a temporary directory.
- **GPTCache 0.1.44**, as its docs set up a similarity cache: `Cache.init` with
  `get_data_manager(CacheBase("sqlite"), VectorBase("faiss"))` and `SearchDistanceEvaluation()`,
  `gptcache.adapter.api.put` / `get`, swept over its `similarity_threshold`. Its FAISS index is
  `IDMap,Flat` over L2, and `SearchDistanceEvaluation` scores `4 - L2²`; on unit vectors a
  GPTCache threshold `t` therefore serves exactly the matches with cosine ≥ `2t - 1`.

Quality: every pair gets a cache of its own on both sides (ours: a partition per pair), holding
only the pair's stored question, then the asked one is looked up. Latency: one cache per size
holding the stored questions of the pair set plus random unit vectors as filler (cosine ≈ 0 to
every question, so never a match); 200 asked questions are timed on each side.

    python -m benchmarks.gptcache_comparison            # both pair sets, 1k and 100k entries
    python -m benchmarks.gptcache_comparison --quick    # CI: 1k entries, a subset of the pairs
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cache_hit_rates import MemoEmbedder, SweepPoint, evaluate_pairs
from benchmarks.cache_latency import percentile
from benchmarks.cache_options import BENCH_MODEL, PAIRS_PATH, REPO_ROOT, BenchmarkError
from benchmarks.cache_pairs import NEAR_MISS_KINDS, Pair, first_of_each_group, load_pairs
from serve_app.cache.deployment import SemanticCache, embedding_text
from serve_app.cache.edge_store import EdgeCacheStore
from serve_app.cache.embedder import Embedder, make_embedder
from serve_app.cache.keys import CacheKey, cache_key_for_request
from serve_app.cache.store import StoredAnswer
from serve_app.config import CacheConfig

HELDOUT_PATH = PAIRS_PATH.parent / "cache_pairs_heldout.jsonl"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "gptcache_comparison.json"
DOC_FIGURE = REPO_ROOT / "docs" / "img" / "gptcache_comparison.png"

GPTCACHE_THRESHOLDS = tuple(round(0.80 + 0.005 * step, 3) for step in range(40))  # 0.800 … 0.995
GPTCACHE_DEFAULT_THRESHOLD = 0.8  # gptcache.Config().similarity_threshold
_GPTCACHE_DEPENDENCIES = ("gptcache", "faiss", "sqlalchemy")
_FILLER_BATCH = 10_000
_NOW_S = time.time()
_WARMUP_QUERIES = 5


@dataclass(frozen=True)
class ComparisonOptions:
    """What one run measures; `quick()` is the CI configuration."""

    pair_paths: tuple[Path, ...] = (PAIRS_PATH, HELDOUT_PATH)
    pairs_per_group: int | None = None
    """Only the first N pairs of each (kind, label) group; None: all."""
    sizes: tuple[int, ...] = (1_000, 100_000)
    """Cache sizes (entries) at which lookups are timed."""
    queries: int = 200
    """Timed lookups per size and system."""
    thresholds: tuple[float, ...] = GPTCACHE_THRESHOLDS
    """GPTCache `similarity_threshold` values swept on the pairs."""
    faiss_threads: int = 1
    """OpenMP threads of GPTCache's FAISS scan; 1 like our store and embedder, 0: FAISS's
    default (every core, which on a busy 2-core box spends milliseconds in OpenMP barriers)."""
    seed: int = 0
    out: Path = DEFAULT_OUT
    figure: Path | None = None
    """Also write the PNG here (the doc figure); it is always written beside `out`."""

    @classmethod
    def quick(cls, **overrides: Any) -> ComparisonOptions:
        quick = cls(pairs_per_group=3, sizes=(1_000,), queries=30, thresholds=(0.8, 0.9, 0.95))
        return replace(quick, **overrides)


# ---- GPTCache -----------------------------------------------------------------------------


def check_gptcache_installed() -> None:
    """Fail with the packages' names: GPTCache would otherwise pip-install them at import."""
    missing = [name for name in _GPTCACHE_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchmarkError(
            f"missing {missing}: pip install gptcache==0.1.44 faiss-cpu sqlalchemy "
            "(GPTCache's sqlite + faiss data manager)"
        )


class GPTCacheUnderTest:
    """One GPTCache instance, set up as its docs set up a similarity cache (sqlite + faiss)."""

    def __init__(self, embedder: Embedder, directory: Path, *, max_size: int) -> None:
        from gptcache import Cache, Config
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation import SearchDistanceEvaluation

        directory.mkdir(parents=True, exist_ok=True)
        self._embedder = embedder
        self.data_manager = get_data_manager(
            CacheBase("sqlite", sql_url=f"sqlite:///{directory / 'sqlite.db'}"),
            VectorBase("faiss", dimension=embedder.dim, index_path=str(directory / "faiss.index")),
            max_size=max_size,
        )
        self.cache = Cache()
        self.cache.init(
            pre_embedding_func=get_prompt,
            embedding_func=self._embed,
            data_manager=self.data_manager,
            similarity_evaluation=SearchDistanceEvaluation(),
            config=Config(similarity_threshold=GPTCACHE_DEFAULT_THRESHOLD),
        )

    def _embed(self, text: str, **_: Any) -> np.ndarray:
        return np.asarray(self._embedder.embed(text), dtype=np.float32)

    def set_threshold(self, threshold: float) -> None:
        self.cache.config.similarity_threshold = threshold

    def put(self, question: str, answer: str) -> None:
        from gptcache.adapter.api import put

        put(question, answer, cache_obj=self.cache)

    def get(self, question: str) -> str | None:
        from gptcache.adapter.api import get

        return get(question, cache_obj=self.cache)

    def close(self) -> None:
        self.data_manager.close()
        # Cache.init registers an atexit close of its data manager, which would write the FAISS
        # index into a directory removed by then.
        self.cache.data_manager = _ClosedDataManager()

    def import_filler(self, vectors: np.ndarray) -> None:
        """Bulk-load filler entries with GPTCache's own `import_data` (as its docs do)."""
        for start in range(0, len(vectors), _FILLER_BATCH):
            batch = vectors[start : start + _FILLER_BATCH]
            numbers = range(start, start + len(batch))
            self.data_manager.import_data(
                questions=[f"filler question {n}" for n in numbers],
                answers=[f"filler answer {n}" for n in numbers],
                embedding_datas=list(batch),
                session_ids=[None] * len(batch),
            )


class _ClosedDataManager:
    def close(self) -> None:
        pass


def gptcache_pair_hits(
    pairs: Sequence[Pair], embedder: Embedder, thresholds: Sequence[float], directory: Path
) -> dict[float, list[bool]]:
    """Per threshold, whether GPTCache served each pair's stored answer for its asked question."""
    hits: dict[float, list[bool]] = {t: [] for t in thresholds}
    for index, pair in enumerate(pairs):
        gpt = GPTCacheUnderTest(embedder, directory / f"pair-{index}", max_size=10)
        answer = f"answer to: {pair.stored}"
        try:
            gpt.put(pair.stored, answer)
            for threshold in thresholds:
                gpt.set_threshold(threshold)
                found = gpt.get(pair.asked)
                if found not in (None, answer):
                    raise BenchmarkError(f"GPTCache returned a foreign answer for {pair.asked!r}")
                hits[threshold].append(found is not None)
        finally:
            gpt.close()
    return hits


# ---- quality -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    hits: int
    positives: int
    false_hits: int
    near_miss_false_hits: int
    negatives: int
    near_miss_negatives: int

    @classmethod
    def of(cls, pairs: Sequence[Pair], hits: Sequence[bool]) -> Counts:
        near = [not p.should_hit and p.kind in NEAR_MISS_KINDS for p in pairs]
        return cls(
            hits=sum(h and p.should_hit for p, h in zip(pairs, hits, strict=True)),
            positives=sum(p.should_hit for p in pairs),
            false_hits=sum(h and not p.should_hit for p, h in zip(pairs, hits, strict=True)),
            near_miss_false_hits=sum(h and n for h, n in zip(hits, near, strict=True)),
            negatives=sum(not p.should_hit for p in pairs),
            near_miss_negatives=sum(near),
        )


@dataclass(frozen=True)
class PairSetResult:
    path: str
    pairs: int
    ours: Counts
    gptcache: dict[float, Counts]
    ours_missed: list[dict[str, Any]] = field(default_factory=list)
    """Should-hit pairs ours missed, with the measured reason (below threshold or guard)."""
    ours_false_hits: list[dict[str, Any]] = field(default_factory=list)

    def gptcache_safe(self) -> tuple[float, Counts] | None:
        """GPTCache's threshold with 0 near-miss false hits and the most true hits (lowest t)."""
        safe = [(t, c) for t, c in self.gptcache.items() if c.near_miss_false_hits == 0]
        return max(safe, key=lambda tc: (tc[1].hits, -tc[0])) if safe else None

    def gptcache_equal_hits(self) -> tuple[float, Counts]:
        """GPTCache's threshold whose true hits are closest to ours (at least ours if any is)."""
        at_least = [(t, c) for t, c in self.gptcache.items() if c.hits >= self.ours.hits]
        if at_least:
            return max(at_least, key=lambda tc: tc[0])
        return max(self.gptcache.items(), key=lambda tc: (tc[1].hits, tc[0]))


def compare_quality(
    pairs: Sequence[Pair],
    path: Path,
    embedder: MemoEmbedder,
    thresholds: Sequence[float],
    directory: Path,
) -> PairSetResult:
    config = CacheConfig()
    (ours,) = evaluate_pairs(
        pairs,
        embedder,
        thresholds=[config.similarity_threshold],
        verify_options=[config.verify_candidates],
    )
    gpt_hits = gptcache_pair_hits(pairs, embedder, thresholds, directory)
    return PairSetResult(
        path=_display(path),
        pairs=len(pairs),
        ours=Counts.of(pairs, [o.hit for o in ours.outcomes]),
        gptcache={t: Counts.of(pairs, hits) for t, hits in gpt_hits.items()},
        ours_missed=[_why_missed(o, ours) for o in ours.missed],
        ours_false_hits=[_describe(o) for o in ours.false_hits],
    )


def _display(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def _describe(outcome: Any) -> dict[str, Any]:
    return {
        "stored": outcome.pair.stored,
        "asked": outcome.pair.asked,
        "kind": outcome.pair.kind,
        "cosine": round(outcome.cosine, 4),
    }


def _why_missed(outcome: Any, point: SweepPoint) -> dict[str, Any]:
    below = outcome.cosine < point.threshold
    reason = "cosine below threshold" if below else f"guard: {outcome.guard_reason}"
    return {**_describe(outcome), "reason": reason}


# ---- latency -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyRow:
    entries: int
    queries: int
    ours_p50_ms: float
    ours_p99_ms: float
    ours_hits: int
    ours_search_p50_ms: float
    """The Edge store's `search` alone, the same queries."""
    gptcache_p50_ms: float
    gptcache_p99_ms: float
    gptcache_hits: int
    gptcache_search_p50_ms: float
    """GPTCache's `data_manager.search` (the FAISS flat scan) alone, the same queries."""


def _bench_key(question: str) -> CacheKey:
    body = {"model": BENCH_MODEL, "messages": [{"role": "user", "content": question}]}
    key = cache_key_for_request(
        {**body, "temperature": 0},
        kind="chat",
        tenant="bench-latency",
        model=BENCH_MODEL,
        cache_nondeterministic=False,
    )
    if key is None:
        raise BenchmarkError("a plain temperature-0 chat request is not cacheable")
    return key


def _filler_entry(index: int, partition: str) -> StoredAnswer:
    return StoredAnswer(
        partition=partition,
        exact_key=f"filler-{index}",
        query_text=f"filler question {index}",
        tenant="bench-latency",
        model=BENCH_MODEL,
        answer_text=f"filler answer {index}",
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=24,
        tier="small",
        created_at_s=_NOW_S,
        expires_at_s=_NOW_S + 86_400.0,
    )


def measure_latency(
    pairs: Sequence[Pair],
    embedder: MemoEmbedder,
    entries: int,
    queries: int,
    rng: np.random.Generator,
    directory: Path,
) -> LatencyRow:
    """Time `queries` lookups of asked questions in caches of `entries` entries, both sides."""
    stored = sorted({p.stored for p in pairs})[:entries]
    asked = [p.asked for p in pairs]
    picks = [asked[i] for i in rng.integers(len(asked), size=queries + _WARMUP_QUERIES)]
    for text in {*stored, *picks}:  # both sides' lookups then skip the embedder
        embedder.embed(text)
        embedder.embed(embedding_text(text))
    filler = rng.standard_normal((entries - len(stored), embedder.dim), dtype=np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    ours = asyncio.run(_time_ours(stored, picks, filler, embedder))
    gpt = _time_gptcache(stored, picks, filler, embedder, entries, directory)
    return LatencyRow(entries=entries, queries=queries, **ours, **gpt)


async def _time_ours(
    stored: Sequence[str], picks: Sequence[str], filler: np.ndarray, embedder: MemoEmbedder
) -> dict[str, Any]:
    store = EdgeCacheStore(None, embedder.dim)
    cache = SemanticCache(CacheConfig(edge_path=None), embedder=embedder, store=store)
    try:
        partition = _bench_key(picks[0]).partition
        for index, vector in enumerate(filler):
            store.upsert(vector.tolist(), _filler_entry(index, partition))
        for question in stored:
            key = _bench_key(question)
            ok = await cache.store(
                key,
                answer_text=f"answer to: {question}",
                finish_reason="stop",
                prompt_tokens=12,
                completion_tokens=24,
                tier="small",
            )
            if not ok:
                raise BenchmarkError(f"our cache refused to store {question!r}")
        total_ms, hits = [], 0
        for number, question in enumerate(picks):
            started = time.perf_counter()
            lookup = await cache.lookup(_bench_key(question))
            elapsed_ms = (time.perf_counter() - started) * 1e3
            if lookup.kind == "error":
                raise BenchmarkError(f"our lookup of {question!r} failed")
            if number >= _WARMUP_QUERIES:
                total_ms.append(elapsed_ms)
                hits += lookup.answer is not None
        search_ms = []
        config = CacheConfig()
        for question in picks[_WARMUP_QUERIES:]:
            vector = embedder.embed(embedding_text(question))
            started = time.perf_counter()
            store.search(
                vector, partition=partition, threshold=config.similarity_threshold, now_s=_NOW_S
            )
            search_ms.append((time.perf_counter() - started) * 1e3)
    finally:
        cache.close()
    return {
        "ours_p50_ms": percentile(total_ms, 50),
        "ours_p99_ms": percentile(total_ms, 99),
        "ours_hits": hits,
        "ours_search_p50_ms": percentile(search_ms, 50),
    }


def _time_gptcache(
    stored: Sequence[str],
    picks: Sequence[str],
    filler: np.ndarray,
    embedder: MemoEmbedder,
    entries: int,
    directory: Path,
) -> dict[str, Any]:
    gpt = GPTCacheUnderTest(embedder, directory / f"latency-{entries}", max_size=2 * entries)
    try:
        return _time_gptcache_lookups(gpt, stored, picks, filler, embedder)
    finally:
        gpt.close()


def _time_gptcache_lookups(
    gpt: GPTCacheUnderTest,
    stored: Sequence[str],
    picks: Sequence[str],
    filler: np.ndarray,
    embedder: MemoEmbedder,
) -> dict[str, Any]:
    gpt.import_filler(filler)
    for question in stored:
        gpt.put(question, f"answer to: {question}")
    # Its threshold giving the same cosine cut as ours (cosine = 2t - 1), so hits are comparable.
    gpt.set_threshold((1 + CacheConfig().similarity_threshold) / 2)
    total_ms, hits = [], 0
    for number, question in enumerate(picks):
        started = time.perf_counter()
        found = gpt.get(question)
        elapsed_ms = (time.perf_counter() - started) * 1e3
        if number >= _WARMUP_QUERIES:
            total_ms.append(elapsed_ms)
            hits += found is not None
    search_ms = []
    for question in picks[_WARMUP_QUERIES:]:
        vector = np.asarray(embedder.embed(question), dtype=np.float32)
        started = time.perf_counter()
        gpt.data_manager.search(vector, top_k=-1)
        search_ms.append((time.perf_counter() - started) * 1e3)
    return {
        "gptcache_p50_ms": percentile(total_ms, 50),
        "gptcache_p99_ms": percentile(total_ms, 99),
        "gptcache_hits": hits,
        "gptcache_search_p50_ms": percentile(search_ms, 50),
    }


# ---- run, report --------------------------------------------------------------------------


def run_comparison(options: ComparisonOptions, *, embedder: Embedder | None = None) -> dict:
    check_gptcache_installed()
    if options.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(options.faiss_threads)
    config = CacheConfig()
    base = embedder or make_embedder(config.embedding_model, config.embedding_threads)
    memo = base if isinstance(base, MemoEmbedder) else MemoEmbedder(base)
    rng = np.random.default_rng(options.seed)
    pair_sets: list[PairSetResult] = []
    latency: list[LatencyRow] = []
    with tempfile.TemporaryDirectory(prefix="gptcache-comparison-") as tmp:
        directory = Path(tmp)
        all_pairs: list[Pair] = []
        for number, path in enumerate(options.pair_paths):
            pairs = load_pairs(path)
            if options.pairs_per_group is not None:
                pairs = first_of_each_group(pairs, options.pairs_per_group)
            all_pairs.extend(pairs)
            pair_sets.append(
                compare_quality(pairs, path, memo, options.thresholds, directory / f"set-{number}")
            )
        for entries in options.sizes:
            latency.append(
                measure_latency(all_pairs, memo, entries, options.queries, rng, directory)
            )
    return {
        "gptcache_version": _version("gptcache"),
        "faiss_version": _version("faiss-cpu"),
        "embedding_model": config.embedding_model,
        "faiss_threads": options.faiss_threads or "faiss default",
        "embedding_p50_ms": percentile(memo.latencies_ms, 50),
        "embedding_p99_ms": percentile(memo.latencies_ms, 99),
        "ours": {
            "similarity_threshold": config.similarity_threshold,
            "verify_candidates": config.verify_candidates,
        },
        "pair_sets": [_pair_set_json(result) for result in pair_sets],
        "latency": [row.__dict__ for row in latency],
        "table": comparison_rows(pair_sets, latency),
    }


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _pair_set_json(result: PairSetResult) -> dict[str, Any]:
    safe = result.gptcache_safe()
    equal = result.gptcache_equal_hits()
    return {
        "path": result.path,
        "pairs": result.pairs,
        "ours": result.ours.__dict__,
        "gptcache_sweep": {f"{t:.3f}": c.__dict__ for t, c in sorted(result.gptcache.items())},
        "gptcache_zero_near_miss_threshold": safe[0] if safe else None,
        "gptcache_equal_hits_threshold": equal[0],
        "ours_missed": result.ours_missed,
        "ours_false_hits": result.ours_false_hits,
    }


def comparison_rows(pair_sets: Sequence[PairSetResult], latency: Sequence[LatencyRow]) -> list:
    """[figure, ours, GPTCache, ratio ours/GPTCache, better] rows of the one printed table."""
    rows: list[list[Any]] = []
    for result in pair_sets:
        name = Path(result.path).stem
        ours = result.ours
        safe = result.gptcache_safe()
        if safe is None:
            t, c = max(result.gptcache.items())
            rows.append(
                [
                    f"{name}: true hits (no GPTCache t has 0 near-miss FH; strictest t={t:.3f} "
                    f"has {c.near_miss_false_hits})",
                    ours.hits,
                    c.hits,
                ]
            )
        else:
            t, c = safe
            rows.append(
                [f"{name}: true hits (GPTCache t={t:.3f}, 0 near-miss FH)", ours.hits, c.hits]
            )
        t, c = result.gptcache_equal_hits()
        rows.append(
            [
                f"{name}: near-miss FH at ~equal hits (GPTCache t={t:.3f}: {c.hits} hits)",
                ours.near_miss_false_hits,
                c.near_miss_false_hits,
            ]
        )
        rows.append([f"{name}: all FH at the same point", ours.false_hits, c.false_hits])
        default = result.gptcache.get(GPTCACHE_DEFAULT_THRESHOLD)
        if default is not None:
            rows.append([f"{name}: true hits (GPTCache default t=0.80)", ours.hits, default.hits])
            rows.append(
                [
                    f"{name}: near-miss FH (GPTCache default t=0.80)",
                    ours.near_miss_false_hits,
                    default.near_miss_false_hits,
                ]
            )
    for row in latency:
        rows.append([f"lookup p50 ms @ {row.entries:,}", row.ours_p50_ms, row.gptcache_p50_ms])
        rows.append([f"lookup p99 ms @ {row.entries:,}", row.ours_p99_ms, row.gptcache_p99_ms])
        rows.append(
            [
                f"  vector search alone p50 ms @ {row.entries:,}",
                row.ours_search_p50_ms,
                row.gptcache_search_p50_ms,
            ]
        )
    for row in rows:
        ours, theirs = row[1], row[2]
        numeric = isinstance(theirs, int | float)
        row[3:] = [round(ours / theirs, 3) if numeric and theirs else None]
    return rows


def format_table(report: dict) -> str:
    header = ["figure", "ours (0.92 + guard)", "GPTCache", "ratio ours/GPTCache"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for figure, ours, theirs, ratio in report["table"]:
        cells = [figure, _cell(ours), _cell(theirs), "n/a" if ratio is None else f"{ratio:.3g}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["pair_sets"]
    fig, axes = plt.subplots(1, len(sets) + 1, figsize=(5 * (len(sets) + 1), 4))
    for ax, pair_set in zip(axes, sets, strict=False):
        sweep = pair_set["gptcache_sweep"]
        thresholds = [float(t) for t in sweep]
        ax.plot(thresholds, [c["hits"] for c in sweep.values()], "o-", label="GPTCache hits")
        ax.plot(
            thresholds,
            [c["near_miss_false_hits"] for c in sweep.values()],
            "s--",
            label="GPTCache near-miss FH",
        )
        ours = pair_set["ours"]
        ax.axhline(ours["hits"], color="tab:green", label=f"ours hits ({ours['hits']})")
        ax.axhline(
            ours["near_miss_false_hits"],
            color="tab:red",
            linestyle=":",
            label=f"ours near-miss FH ({ours['near_miss_false_hits']})",
        )
        ax.set_title(
            f"{Path(pair_set['path']).name}: {ours['positives']} should-hit, "
            f"{ours['near_miss_negatives']} near-miss",
            fontsize=9,
        )
        ax.set_xlabel("GPTCache similarity_threshold (cosine = 2t - 1)")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=7)
    ax = axes[-1]
    rows = report["latency"]
    x = np.arange(len(rows))
    for offset, (system, color) in enumerate((("ours", "tab:green"), ("gptcache", "tab:blue"))):
        p50 = [row[f"{system}_p50_ms"] for row in rows]
        p99 = [row[f"{system}_p99_ms"] for row in rows]
        ax.bar(x + 0.4 * offset - 0.2, p99, 0.35, color=color, alpha=0.35)
        ax.bar(x + 0.4 * offset - 0.2, p50, 0.35, color=color, label=f"{system} p50 (p99 pale)")
    ax.set_xticks(x, [f"{row['entries']:,} entries" for row in rows])
    ax.set_yscale("log")
    ax.set_ylabel("lookup ms (embedding excluded)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: dict, options: ComparisonOptions) -> list[Path]:
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    pngs = [options.out.with_suffix(".png")]
    if options.figure is not None:
        pngs.append(options.figure)
    for png in pngs:
        plot_report(report, png)
    return [options.out, *pngs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gptcache_comparison",
        description="Our semantic cache (as shipped) against GPTCache 0.1.44 with the same "
        "embedder: hits and near-miss false hits on labelled pair sets, lookup p50/p99 at "
        "several cache sizes. Prints one table (ratio ours/GPTCache per figure), writes JSON "
        "and a PNG beside it.",
    )
    parser.add_argument("--quick", action="store_true", help="CI: 1k entries, 3 pairs a group")
    parser.add_argument(
        "--pairs",
        type=Path,
        nargs="+",
        help=f"pair files (default: {PAIRS_PATH.name} and {HELDOUT_PATH.name})",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="cache sizes (default 1000 100000)")
    parser.add_argument("--queries", type=int, help="timed lookups per size (default 200)")
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="OpenMP threads of GPTCache's FAISS scan (default 1, like our store; 0: all cores)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument(
        "--doc-figure",
        action="store_true",
        help=f"also write the PNG to {DOC_FIGURE.relative_to(REPO_ROOT)}",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> ComparisonOptions:
    overrides: dict[str, Any] = {"out": args.out, "faiss_threads": args.faiss_threads}
    if args.pairs:
        overrides["pair_paths"] = tuple(args.pairs)
    if args.sizes:
        overrides["sizes"] = tuple(args.sizes)
    if args.queries:
        overrides["queries"] = args.queries
    if args.doc_figure:
        overrides["figure"] = DOC_FIGURE
    if args.quick:
        return ComparisonOptions.quick(**overrides)
    return replace(ComparisonOptions(), **overrides)


def main(argv: Sequence[str] | None = None) -> None:
    options = options_from_args(build_parser().parse_args(argv))
    report = run_comparison(options)
    print(format_table(report))
    print(
        f"\nEmbedder (same for both, excluded above): p50 {report['embedding_p50_ms']:.2f} ms, "
        f"p99 {report['embedding_p99_ms']:.2f} ms. FH = false hits."
    )
    for path in write_outputs(report, options):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
