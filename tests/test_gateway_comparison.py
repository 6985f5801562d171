"""The gateway comparison (issue 18, part 1): its quick mode runs end to end.

The quick run starts the fake backend, LiteLLM's proxy (`make litellm-venv`) and our cascade on
a Ray cluster of its own, with the fake as both tiers. Timings are printed, never asserted:
what is asserted is what a reader of the report relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.gateway_comparison import GATEWAYS, TABLE_FIGURES, build_parser, main
from benchmarks.gateway_fake_backend import CANNED_WORDS, Pace, canned_text


def test_help_names_the_quick_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])

    assert "--quick" in capsys.readouterr().out


def test_fake_answer_is_cut_at_the_clients_limit() -> None:
    pace = Pace(max_tokens=8)

    assert pace.tokens({"max_tokens": 3}) == (list(CANNED_WORDS[:3]), "length")
    assert pace.tokens({"max_tokens": 64}) == (list(CANNED_WORDS[:8]), "stop")
    assert canned_text(3) == "The fake backend"


@pytest.mark.own_cluster
def test_quick_run_compares_both_gateways_on_the_same_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gateway_comparison.json"

    main(["--quick", "--out", str(out)])

    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert "on/Lite" in printed and "max rps, p99 added < 50 ms" in printed
    # Every gateway answered every request at the lowest load, streamed and not.
    lowest = [p for p in report["points"] if p["offered_rps"] == 10 and p["target"] in GATEWAYS]
    assert {(p["target"], p["stream"]) for p in lowest} == {
        (g, s) for g in GATEWAYS for s in (False, True)
    }
    assert all(p["summary"]["ok"] == p["summary"]["requests"] > 0 for p in lowest)
    # The table has every figure of every gateway at the table's load.
    labels = [label for _, label in TABLE_FIGURES]
    for mode in ("whole", "streamed"):
        rows = {r["figure"]: r["values"] for r in report["table"]}
        for label in labels:
            assert set(rows[f"{label} @10 rps {mode}"]) == set(GATEWAYS)
    # Both gateways relayed the backend's own canned text, and nothing else.
    assert all(report["answers"]["exact"].values())
    # Ours with cache and router on looked every question up; none was asked before.
    assert report["answers"]["ours_routed_cache"].get("miss", 0) > 0
    assert report["answers"]["ours_routed_hit_rate"] == 0
    assert set(report["idle_cpu"]) == {"litellm", "ours"}
