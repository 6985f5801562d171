"""Smoke run of the router latency benchmark (figures are printed, never asserted)."""

import json
from pathlib import Path

import pytest
from ray import serve

from benchmarks.router_latency import build_parser, main


def test_help_describes_the_benchmark() -> None:
    assert "--quick" in build_parser().format_help()


def test_quick_run_measures_every_setting_at_every_concurrency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "router_latency.json"
    real_context = serve.get_replica_context
    assert main(["--quick", "--requests", "16", "--out", str(out)]) == 0
    assert serve.get_replica_context is real_context  # the stand-in context is undone
    report = json.loads(out.read_text())
    runs = {(r["setting"], r["concurrency"]): r for r in report["results"]}
    settings = ("classifier batched", "classifier unbatched", "heuristic")
    assert set(runs) == {(s, c) for s in settings for c in (1, 8)}
    for run in runs.values():
        assert run["requests"] == 16
        assert 0 < run["p50_ms"] <= run["p99_ms"]
        assert run["throughput_rps"] > 0
    # Unbatched scores one request per pass; batched serves 8 concurrent clients together.
    assert runs[("classifier unbatched", 8)]["mean_batch"] == 1
    assert runs[("classifier batched", 8)]["mean_batch"] > 1
    assert "classifier batched" in capsys.readouterr().out
