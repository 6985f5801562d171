"""The confidence calibration's grading, statistics and threshold choice, on synthetic answers.

`python -m benchmarks.confidence_calibration` asks a live small tier; what it concludes rests
on these pure parts: reading a letter or a final answer out of free text, the Wilson and
bootstrap intervals, the sweep, the stated rule that picks the default threshold (which must
fire), and the replay of early escalation over recorded tokens.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from benchmarks.answer_grading import (
    extract_choice,
    extract_math_answer,
    grade_answer,
    math_answers_equal,
    question_messages,
)
from benchmarks.calibration_analysis import (
    auc_with_ci,
    calibration_report,
    choose_threshold,
    operating_point,
    replay_early_escalation,
    sweep,
    threshold_grid,
    wilson_interval,
)
from benchmarks.early_escalation_benchmark import compare_runs, config_variant
from benchmarks.labelled_questions import load_labelled_questions, sample_questions

REPO_ROOT = Path(__file__).resolve().parent.parent
OPTIONS = ["Paris", "London", "Berlin", "Rome"]
CHOICE_ROW = {
    "id": "q1",
    "source": "mmlu",
    "kind": "choice",
    "prompt": "Capital of France?\n"
    + "\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", OPTIONS, strict=True))
    + "\nAnswer:",
    "answer": "A",
    "choices": 4,
}
MATH_ROW = {
    "id": "m1",
    "source": "math",
    "kind": "math",
    "prompt": "1/2 + 1/4?",
    "answer": "\\frac{3}{4}",
}


# ---- grading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("A", "A"),
        ("B.", "B"),
        ("(C)", "C"),
        ("The answer is D.", "D"),
        ("Answer: B", "B"),
        ("A cat sat on the mat. The answer is (C).", "C"),
        ("Option D: Rome", "D"),
        ("Paris is the capital of France.", "A"),  # the one option quoted
        ("E", None),  # no such option
        ("I don't know.", None),
        ("B or C, hard to say", None),  # two letters named: nothing to grade
    ],
)
def test_choice_letters_are_read_like_a_lenient_grader(text: str, letter: str | None) -> None:
    assert extract_choice(text, 4, OPTIONS) == letter


@pytest.mark.parametrize(
    ("text", "final"),
    [
        ("So the sum is \\boxed{-15}.", "-15"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),
        ("The final answer is 42.", "42"),
        ("The answer: 17,700 miles", "17700"),
        ("We get 12, then 7", "7"),
        ("\\boxed{12", "12"),  # cut off by max_tokens inside the box
        ("no idea", None),
    ],
)
def test_math_final_answers_are_read(text: str, final: str | None) -> None:
    assert extract_math_answer(text) == final


def test_math_answers_compare_as_text_or_numbers() -> None:
    assert math_answers_equal("\\frac{3}{4}", "0.75")
    assert math_answers_equal("17,700", "17700")
    assert math_answers_equal("$5$", "5")
    assert not math_answers_equal("-3", "3")


def test_grade_answer_per_kind() -> None:
    assert grade_answer(CHOICE_ROW, "The answer is A").correct
    assert not grade_answer(CHOICE_ROW, "The answer is B").correct
    assert grade_answer(CHOICE_ROW, "hmm").parsed is None
    assert grade_answer(MATH_ROW, "It is \\boxed{3/4}.").correct
    assert not grade_answer(MATH_ROW, "It is \\boxed{1}.").correct


def test_the_shipped_questions_grade_their_own_keys_right_and_a_wrong_answer_wrong() -> None:
    rows = load_labelled_questions()
    assert {row["source"] for row in rows} == {"mmlu", "mmlu_pro", "math"}
    assert len(rows) >= 250
    for row in rows:
        if row["kind"] == "choice":
            right, wrong = f"The answer is {row['answer']}.", "The answer is Z."
        else:
            right, wrong = f"\\boxed{{{row['answer']}}}", "\\boxed{not a number}"
        assert grade_answer(row, right).correct, row["id"]
        assert not grade_answer(row, wrong).correct, row["id"]
        asked = question_messages(row)[0]["content"]
        assert asked.startswith(row["prompt"].removesuffix("Answer:").strip())


def test_sampling_is_stratified_seeded_and_fills_a_short_source_from_the_others() -> None:
    rows = [
        {"id": f"{s}{i}", "source": s}
        for s, n in (("a", 50), ("b", 50), ("c", 5))
        for i in range(n)
    ]
    sample = sample_questions(rows, 60, ["a", "b", "c"], seed=1)
    counts = {s: sum(r["source"] == s for r in sample) for s in "abc"}
    assert counts == {"a": 28, "b": 27, "c": 5}
    assert sample == sample_questions(rows, 60, ["a", "b", "c"], seed=1)
    assert sample != sample_questions(rows, 60, ["a", "b", "c"], seed=2)


# ---- statistics and the threshold -----------------------------------------------------------


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) is None


def _synthetic(n_right: int = 120, n_wrong: int = 80, seed: int = 0) -> list[dict]:
    """Right answers are confident (mean logprob ~ -0.3), wrong ones less so (~ -1.2)."""
    rng = random.Random(seed)
    answers = []
    for correct, centre, count in ((True, -0.3, n_right), (False, -1.2, n_wrong)):
        for i in range(count):
            mean = min(-0.01, rng.gauss(centre, 0.35))
            tokens = [mean + rng.gauss(0, 0.1) for _ in range(rng.choice([3, 40]))]
            answers.append(
                {
                    "id": f"{correct}{i}",
                    "source": "mmlu",
                    "correct": correct,
                    "parsed": "A",
                    "logprobs": tokens,
                }
            )
    return answers


def test_the_chosen_threshold_fires_and_keeps_false_escalations_under_the_cap() -> None:
    answers = _synthetic()
    values = [sum(a["logprobs"]) / len(a["logprobs"]) for a in answers]
    correct = [a["correct"] for a in answers]
    points = sweep(values, correct, threshold_grid(values))
    chosen = choose_threshold(points, max_false_escalation=0.10)
    assert chosen is not None and chosen.caught > 0
    assert chosen.false_escalation_rate <= 0.10
    # No allowed threshold catches more; the next threshold up breaks the cap or adds nothing.
    allowed = [p for p in points if p.false_escalation_rate <= 0.10]
    assert chosen.caught == max(p.caught for p in allowed)
    assert -1.2 < chosen.threshold < -0.3


def test_among_equal_catches_the_lowest_threshold_wins() -> None:
    values, correct = [-2.0, -0.1], [False, True]
    points = sweep(values, correct, [-1.5, -1.0, -0.5])
    assert choose_threshold(points).threshold == -1.5


def test_no_threshold_is_chosen_when_none_catches_within_the_cap() -> None:
    # Every wrong answer is more confident than every right one.
    values, correct = [-0.1, -0.2, -1.0, -1.1], [False, False, True, True]
    assert choose_threshold(sweep(values, correct, threshold_grid(values)), 0.10) is None


def test_answers_without_logprobs_are_never_escalated() -> None:
    point = operating_point([None, -3.0], [False, False], threshold=-1.0)
    assert (point.escalated, point.caught, point.wrong) == (1, 1, 2)


def test_auc_and_its_bootstrap_interval() -> None:
    perfect = auc_with_ci([-2.0, -1.5, -0.2, -0.1], [False, False, True, True], resamples=200)
    assert perfect["auc"] == 1.0 and perfect["ci95"] == (1.0, 1.0)
    answers = _synthetic()
    means = [sum(a["logprobs"]) / len(a["logprobs"]) for a in answers]
    result = auc_with_ci(means, [a["correct"] for a in answers], resamples=300)
    low, high = result["ci95"]
    assert 0.8 < result["auc"] < 1.0 and low < result["auc"] < high


def test_early_escalation_replay_saves_tokens_on_failing_answers_and_counts_extra_ones() -> None:
    failing = {"correct": False, "logprobs": [-2.0] * 100}
    collapse_late = {"correct": True, "logprobs": [-0.1] * 90 + [-3.0] * 10}  # mean -0.39
    confident = {"correct": True, "logprobs": [-0.1] * 100}
    short = {"correct": False, "logprobs": [-2.0] * 3}  # ends before min_tokens
    replay = replay_early_escalation(
        [failing, collapse_late, confident, short],
        min_mean_logprob=-1.0,
        min_tokens=16,
        window_tokens=16,
    )
    assert replay["final_check_escalates"] == 2  # failing and short
    assert replay["stopped_early_of_those"] == 1  # short ends first
    assert replay["token_share_saved_on_those"] == pytest.approx(0.84)
    assert (replay["extra_escalations"], replay["extra_escalations_wrong"]) == (1, 0)


def test_calibration_report_on_synthetic_answers() -> None:
    report = calibration_report(_synthetic(), resamples=100, min_tokens=8, window_tokens=8)
    assert report["answers"] == 200 and report["accuracy"] == pytest.approx(0.6)
    chosen = report["mean"]["chosen"]
    assert chosen["caught"] > 0 and chosen["false_escalation_rate"] <= 0.10
    assert chosen["catch_rate_ci95"][0] < chosen["catch_rate"] < chosen["catch_rate_ci95"][1]
    assert "<-" in report["mean"]["table"]
    assert report["early_escalation_replay"]["answers"] == 200


# ---- early escalation, old against new ------------------------------------------------------


def test_config_variants_differ_only_in_early_escalation_and_share_the_threshold() -> None:
    base = yaml.safe_load((REPO_ROOT / "configs" / "local.yaml").read_text())
    on = config_variant(base, early=True, min_mean_logprob=-0.6)
    off = config_variant(base, early=False, min_mean_logprob=-0.6)
    quality_on = on["applications"][0]["args"]["quality"]
    quality_off = off["applications"][0]["args"]["quality"]
    assert (
        quality_on["early_escalation"]["enabled"] and not quality_off["early_escalation"]["enabled"]
    )
    assert quality_on["min_mean_logprob"] == quality_off["min_mean_logprob"] == -0.6
    assert on["applications"][0]["args"]["router"]["threshold"] == 1.0
    quality_on["early_escalation"]["enabled"] = False
    assert on == off


def test_compare_runs_pairs_requests_escalated_in_both() -> None:
    def row(i: str, escalated: bool, e2e_s: float, cost: float) -> dict:
        return {
            "id": i,
            "status": 200,
            "escalated": escalated,
            "reason": "x" if escalated else None,
            "e2e_s": e2e_s,
            "cost_usd": cost,
            "route": "small",
            "correct": False,
        }

    old = [row("a", True, 4.0, 3e-6), row("b", True, 5.0, 4e-6), row("c", False, 1.0, 1e-6)]
    new = [row("a", True, 1.5, 2e-6), row("b", False, 1.0, 1e-6), row("c", True, 0.5, 1e-6)]
    comparison = compare_runs(old, new)
    assert comparison["escalated_in_both"]["requests"] == 1
    assert comparison["escalated_in_both"]["e2e_s_saved_median"] == pytest.approx(2.5)
    assert (comparison["escalated_only_new"], comparison["escalated_only_old"]) == (1, 1)
    assert comparison["old"]["escalated"] == 2 and comparison["new"]["e2e_s_escalated"]["n"] == 2
