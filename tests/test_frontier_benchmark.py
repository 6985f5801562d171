"""The frontier benchmark (issue 20, part 4), offline: `--quick` on a small subset, and the
invariants of its report a user relies on.

- Every curve is monotone in cost as the threshold falls, and runs from all-small to all-large.
- The shipped operating point lies on the router's curve.
- The evaluated prompts are the test part of the training pipeline's split: none of them is in
  the part the leakage-free refit was fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import frontier
from router_training.config import load_any_config
from router_training.multi_source import Corpus, split_indices
from router_training.sources import load_sources

SHARED_DATA = Path("/work/shared/data/router-outcomes")
KEYS = ("large_share", "quality", "usd_per_1k_requests", "usd_per_m_tokens")


def _close(a: dict, b: dict) -> bool:
    return all(abs(a[k] - b[k]) < 1e-9 for k in KEYS)


def check_invariants(report: dict) -> None:
    assert report["sources"], "no source replayed"
    for source, entry in [*report["sources"].items(), ("pooled", report["pooled"])]:
        h = entry["headline"]
        for name in ("router", "heuristic", "refit", "oracle"):
            points = entry["curves"][name]
            costs = [p["usd_per_1k_requests"] for p in points]
            shares = [p["large_share"] for p in points]
            thresholds = [p["threshold"] for p in points[1:]]
            assert points[0]["threshold"] is None, (source, name)
            assert all(b > a for a, b in zip(thresholds[1:], thresholds, strict=False)), (
                f"{source}/{name}: thresholds must fall along the curve"
            )
            assert all(b > a for a, b in zip(costs, costs[1:], strict=False)), (
                f"{source}/{name}: cost must rise as the threshold falls"
            )
            assert all(b > a for a, b in zip(shares, shares[1:], strict=False))
            assert _close(points[0], h["all_small"]), f"{source}/{name}: first point != all-small"
            assert _close(points[-1], h["all_large"]), f"{source}/{name}: last point != all-large"
        shipped = h["shipped"]
        assert any(_close(shipped, p) for p in entry["curves"]["router"]), (
            f"{source}: the shipped point is not on the router's curve"
        )
        assert (
            abs(h["random_at_shipped_cost"]["usd_per_1k_requests"] - shipped["usd_per_1k_requests"])
            < 1e-9
        )
        for share, row in h["at_quality"].items():
            for name in ("router", "heuristic", "refit", "oracle", "random"):
                point = row[name]
                assert point is not None, f"{source}: all-large always reaches {share}"
                assert point["quality"] >= row["target_quality"] - 1e-9
                assert point["cheaper_than_all_large"] >= 1 - 1e-9
        assert entry["prompts"] == len(entry["prompt_ids"]) == len(set(entry["prompt_ids"]))


def assert_test_part_only(report: dict, config_path: Path) -> None:
    config = load_any_config(config_path)
    outcomes = load_sources(config.sources, config.data_seed)
    none = np.zeros((len(outcomes), 0))  # the split reads the outcomes only
    corpus = Corpus(outcomes, np.zeros(len(outcomes)), np.zeros(len(outcomes)), none, none)
    parts = split_indices(corpus, config, config.seeds[0])
    ids = {name: {corpus.outcomes[i].id for i in rows} for name, rows in parts.items()}
    for entry in report["sources"].values():
        replayed = set(entry["prompt_ids"])
        assert replayed <= ids["test"]
        assert not replayed & (ids["train"] | ids["val"])
    every = [i for e in report["sources"].values() for i in e["prompt_ids"]]
    assert sorted(every) == sorted(report["pooled"]["prompt_ids"])


def _write_source(path: Path, name: str, n: int, rng: np.random.Generator) -> None:
    rows = []
    for i in range(n):
        words = int(rng.integers(3, 120))
        hard = rng.random() < words / 150
        small = float(rng.random() < (0.3 if hard else 0.7))
        large = float(rng.random() < (0.8 if hard else 0.75))
        prompt = f"{name} question {i}: " + " ".join(f"w{j}" for j in range(words))
        rows.append(
            {
                "id": f"{name}/{i}",
                "prompt": prompt,
                "small_score": small,
                "large_score": large,
                "source": name,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_quick_on_synthetic_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    sources = []
    for name in ("alpha", "beta"):
        _write_source(tmp_path / f"{name}.jsonl", name, 150, rng)
        sources.append({"name": name, "format": "jsonl", "path": str(tmp_path / f"{name}.jsonl")})
    config_path = tmp_path / "training.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "sources": sources,
                "seeds": [0],
                "model": {"features": ["prompt"], "prompt_features": ["log_words"]},
            }
        )
    )
    out, png = tmp_path / "frontier.json", tmp_path / "frontier.png"
    assert (
        frontier.main(
            ["--quick", "--training-config", str(config_path), "--out", str(out), "--png", str(png)]
        )
        == 0
    )
    report = json.loads(out.read_text())
    check_invariants(report)
    assert_test_part_only(report, config_path)
    assert set(report["sources"]) == {"alpha", "beta"}
    assert all(e["prompts"] == 30 for e in report["sources"].values())  # 20% of 150 < 40
    assert png.stat().st_size > 10_000
    assert report["token_estimate"]["answer_tokens"] == frontier.DEFAULT_ANSWER_TOKENS
    assert report["not_replayed"].startswith("the quality gate")
    # The built-in router was not fitted on these sources, and says so.
    assert report["router"]["provenance"]["shipped_fit_on_train_plus_test"] is False


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="the shared outcome data is not here")
def test_quick_on_the_shipped_router_data(tmp_path: Path) -> None:
    out, png = tmp_path / "frontier.json", tmp_path / "frontier.png"
    assert frontier.main(["--quick", "--out", str(out), "--png", str(png)]) == 0
    report = json.loads(out.read_text())
    check_invariants(report)
    assert_test_part_only(report, frontier.DEFAULT_TRAINING_CONFIG)
    assert set(report["sources"]) == {"arena", "crux", "math_l5", "mmlu", "mmlu_pro"}
    assert all(e["prompts"] == frontier.QUICK_PER_SOURCE for e in report["sources"].values())
    router = report["router"]
    assert router["checkpoint"] == "builtin://default-router" and router["scorer"] == "classifier"
    # The shipped artefact was fitted on train + test (the report must say so), and the
    # leakage-free refit ranks the test prompts exactly as it does (one length feature).
    assert router["provenance"]["shipped_fit_on_train_plus_test"] is True
    assert all(e["refit_ranks_like_router"] for e in report["sources"].values())


def test_help_names_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        frontier.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--answer-tokens", "--per-source", "--out", "--png"):
        assert option in text
