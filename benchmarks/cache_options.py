"""What one cache benchmark run measures (`BenchmarkOptions`), and where it reads and writes.

Shared by the parts of `benchmarks.cache_benchmark`: `cache_latency` (store and ingress
latency), `cache_hit_rates` (the labelled pairs), `cache_report` (tables, plots, JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.config import CacheConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "cache_benchmark.json"

FULL_SIZES = (1_000, 10_000, 100_000)
FULL_THRESHOLDS = tuple(round(0.80 + 0.01 * step, 2) for step in range(19))  # 0.80 … 0.98
QUICK_THRESHOLDS = (0.85, 0.95)
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2, the packaged embedder

BENCH_MODEL = "cascade"
"""The model name every benchmark request and stored entry carries."""


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
    embedding_model: str | None = None
    """Embedder of part (b); None: the configured default (`CacheConfig().embedding_model`)."""
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
