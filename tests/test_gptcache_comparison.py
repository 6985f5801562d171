"""The GPTCache comparison (issue 18, part 2): its quick mode runs end to end, and the held-out
pair set stays held out.

Timings are printed, never asserted. The quick run uses the real packaged embedder, our real
cache over the Edge store and the real GPTCache (sqlite + faiss).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cache_options import PAIRS_PATH
from benchmarks.cache_pairs import NEAR_MISS_KINDS, load_pairs
from benchmarks.gptcache_comparison import HELDOUT_PATH, build_parser, main
from devtools.models import prepare_source
from serve_app.config import CacheConfig


def test_heldout_pairs_share_no_question_with_the_tuning_set() -> None:
    heldout = load_pairs(HELDOUT_PATH)
    tuned = {q.lower() for pair in load_pairs(PAIRS_PATH) for q in (pair.stored, pair.asked)}

    assert len(heldout) >= 200
    assert not [p for p in heldout if p.stored.lower() in tuned or p.asked.lower() in tuned]
    labels = {(pair.kind, pair.should_hit) for pair in heldout}
    assert all((kind, False) in labels for kind in NEAR_MISS_KINDS)
    assert ("paraphrase", True) in labels


def test_help_names_the_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])

    assert "--quick" in capsys.readouterr().out


def test_quick_run_prints_one_table_and_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepare_source(CacheConfig().embedding_model)
    out = tmp_path / "gptcache_comparison.json"

    main(["--quick", "--out", str(out)])

    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert [Path(s["path"]).name for s in report["pair_sets"]] == [
        PAIRS_PATH.name,
        HELDOUT_PATH.name,
    ]
    assert [row["entries"] for row in report["latency"]] == [1000]
    assert "ratio ours/GPTCache" in printed and "lookup p99 ms @ 1,000" in printed
    # Both sides really looked up: the asked questions include paraphrases of stored ones.
    assert report["latency"][0]["ours_hits"] > 0
    assert report["latency"][0]["gptcache_hits"] > 0
    # The shipped cache keeps its promise on the set it was tuned on.
    assert report["pair_sets"][0]["ours"]["near_miss_false_hits"] == 0
