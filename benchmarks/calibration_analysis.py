"""How well a token-logprob threshold separates a small tier's wrong answers from its right ones.

Pure functions over graded answers (`correct`, per-token `logprobs`): the sweep of a threshold
(escalation, catch and false-escalation rates with Wilson 95% intervals), ROC AUC with a
bootstrap interval, the threshold choice, and a replay of early escalation over the recorded
tokens. `benchmarks.confidence_calibration` runs them on live answers; the tests on synthetic
ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from router_training.metrics import roc_auc
from serve_app.quality.early_stop import stop_token

Signal = Literal["mean", "min"]
Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% by default); None without trials."""
    if trials == 0:
        return None
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    denominator = 1 + z * z / trials
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def signal_value(logprobs: Sequence[float], signal: Signal) -> float | None:
    """The gate's confidence signal of one answer: mean or minimum token logprob."""
    if not logprobs:
        return None
    return float(np.mean(logprobs)) if signal == "mean" else float(np.min(logprobs))


@dataclass(frozen=True)
class OperatingPoint:
    """The gate at one threshold: it escalates an answer whose signal is below `threshold`."""

    threshold: float
    escalated: int
    answers: int
    caught: int  # wrong answers escalated
    wrong: int
    false_escalations: int  # right answers escalated
    right: int

    @property
    def escalation_rate(self) -> float:
        return self.escalated / self.answers if self.answers else 0.0

    @property
    def catch_rate(self) -> float | None:
        return self.caught / self.wrong if self.wrong else None

    @property
    def false_escalation_rate(self) -> float | None:
        return self.false_escalations / self.right if self.right else None

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "escalation_rate": self.escalation_rate,
            "catch_rate": self.catch_rate,
            "catch_rate_ci95": wilson_interval(self.caught, self.wrong),
            "false_escalation_rate": self.false_escalation_rate,
            "false_escalation_rate_ci95": wilson_interval(self.false_escalations, self.right),
        }


def operating_point(
    values: Sequence[float | None], correct: Sequence[bool], threshold: float
) -> OperatingPoint:
    """The gate at `threshold`; an answer without logprobs (None) is never escalated."""
    flags = [value is not None and value < threshold for value in values]
    wrong = sum(not ok for ok in correct)
    return OperatingPoint(
        threshold=threshold,
        escalated=sum(flags),
        answers=len(flags),
        caught=sum(flag and not ok for flag, ok in zip(flags, correct, strict=True)),
        wrong=wrong,
        false_escalations=sum(flag and ok for flag, ok in zip(flags, correct, strict=True)),
        right=len(flags) - wrong,
    )


def threshold_grid(values: Sequence[float | None], step: float = 0.01) -> list[float]:
    """Every threshold worth trying, `step` apart, from below the lowest signal to 0."""
    known = [value for value in values if value is not None]
    if not known:
        return []
    low = math.floor(min(known) / step) * step
    count = int(round(-low / step)) + 1
    return [round(low + i * step, 4) for i in range(count)]


def sweep(
    values: Sequence[float | None], correct: Sequence[bool], thresholds: Sequence[float]
) -> list[OperatingPoint]:
    return [operating_point(values, correct, threshold) for threshold in thresholds]


def choose_threshold(
    points: Sequence[OperatingPoint], max_false_escalation: float = 0.10
) -> OperatingPoint | None:
    """The rule: the highest catch rate whose false-escalation rate is at most the cap.

    Among thresholds that catch as much, the lowest one (fewest escalations, most margin).
    Only a threshold that escalates at least one wrong answer qualifies: a default that never
    fires is no default. None: no threshold catches anything within the cap.
    """
    allowed = [
        point
        for point in points
        if point.caught > 0 and (point.false_escalation_rate or 0.0) <= max_false_escalation
    ]
    if not allowed:
        return None
    return max(allowed, key=lambda point: (point.caught, -point.threshold))


def auc_with_ci(
    values: Sequence[float | None],
    correct: Sequence[bool],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """ROC AUC of "the answer is wrong" from the negated signal, with a percentile bootstrap
    95% interval over answers (resamples with only one class are skipped)."""
    pairs = [
        (-value, not ok) for value, ok in zip(values, correct, strict=True) if value is not None
    ]
    if not pairs:
        return {"auc": None, "ci95": None, "answers": 0}
    scores = np.array([score for score, _ in pairs])
    labels = np.array([label for _, label in pairs])
    auc = roc_auc(scores, labels)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(resamples):
        index = rng.integers(0, len(pairs), len(pairs))
        value = roc_auc(scores[index], labels[index])
        if value is not None:
            boots.append(value)
    ci = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))) if boots else None
    return {"auc": auc, "ci95": ci, "answers": len(pairs)}


def replay_early_escalation(
    answers: Sequence[dict[str, Any]],
    *,
    min_mean_logprob: float | None,
    min_token_logprob: float | None = None,
    min_tokens: int,
    window_tokens: int,
) -> dict[str, Any]:
    """What early escalation would have done to recorded answers, next to the final check.

    For each answer: where the monitor stops it (None: never), and whether the whole-answer
    check escalates it. Reports early stops among answers the final check escalates (the
    tokens saved on those) and among answers it keeps (escalations early escalation adds).
    """
    stops, final = [], []
    for answer in answers:
        logprobs = answer["logprobs"]
        stops.append(
            stop_token(
                logprobs,
                min_mean_logprob=min_mean_logprob,
                min_token_logprob=min_token_logprob,
                min_tokens=min_tokens,
                window_tokens=window_tokens,
            )
            if logprobs
            else None
        )
        mean = signal_value(logprobs, "mean")
        low = signal_value(logprobs, "min")
        final.append(
            (min_mean_logprob is not None and mean is not None and mean < min_mean_logprob)
            or (min_token_logprob is not None and low is not None and low < min_token_logprob)
        )
    failing = [i for i, escalated in enumerate(final) if escalated]
    kept = [i for i, escalated in enumerate(final) if not escalated]
    stopped_failing = [i for i in failing if stops[i] is not None]
    saved = [1 - stops[i] / len(answers[i]["logprobs"]) for i in stopped_failing]
    added = [i for i in kept if stops[i] is not None]
    return {
        "answers": len(answers),
        "answers_with_min_tokens": sum(len(a["logprobs"]) >= min_tokens for a in answers),
        "final_check_escalates": len(failing),
        "stopped_early_of_those": len(stopped_failing),
        "token_share_saved_on_those": float(np.mean(saved)) if saved else None,
        "extra_escalations": len(added),
        "extra_escalations_wrong": sum(not answers[i]["correct"] for i in added),
        "extra_escalation_rate_of_kept": len(added) / len(kept) if kept else None,
    }


def format_table(points: Sequence[OperatingPoint], chosen: OperatingPoint | None) -> str:
    """A plain-text table of operating points; the chosen one is marked with `<-`."""

    def pct(value: float | None, ci: tuple[float, float] | None = None) -> str:
        if value is None:
            return "-"
        text = f"{100 * value:5.1f}%"
        return text + (f" [{100 * ci[0]:4.1f}, {100 * ci[1]:4.1f}]" if ci else "")

    lines = [
        f"{'threshold':>9}  {'escalated':>9}  {'wrong caught [95% CI]':>24}  "
        f"{'right escalated [95% CI]':>24}"
    ]
    for point in points:
        mark = "  <-" if chosen is not None and point.threshold == chosen.threshold else ""
        catch = pct(point.catch_rate, wilson_interval(point.caught, point.wrong))
        false = pct(
            point.false_escalation_rate, wilson_interval(point.false_escalations, point.right)
        )
        lines.append(
            f"{point.threshold:>9.2f}  {pct(point.escalation_rate):>9}  {catch:>24}  "
            f"{false:>24}{mark}"
        )
    return "\n".join(lines)


def table_thresholds(
    grid: Sequence[float], chosen: OperatingPoint | None, rows: int = 14
) -> list[float]:
    """A readable subset of the grid for the printed table, always with the chosen threshold."""
    if not grid:
        return []
    picks = {grid[int(round(i * (len(grid) - 1) / (rows - 1)))] for i in range(rows)}
    if chosen is not None:
        picks.add(chosen.threshold)
    return sorted(picks)


def calibration_report(
    answers: Sequence[dict[str, Any]],
    *,
    max_false_escalation: float = 0.10,
    min_tokens: int = 16,
    window_tokens: int = 32,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Everything the calibration reports about graded answers (`source`, `correct`,
    `parsed`, `logprobs`): accuracy, AUC, both sweeps, the chosen thresholds and an early
    escalation replay at the chosen mean threshold."""
    correct = [bool(answer["correct"]) for answer in answers]
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted({answer["source"] for answer in answers}):
        mine = [answer for answer in answers if answer["source"] == source]
        by_source[source] = {
            "answers": len(mine),
            "accuracy": sum(a["correct"] for a in mine) / len(mine),
            "parsed": sum(a["parsed"] is not None for a in mine) / len(mine),
            "mean_tokens": float(np.mean([len(a["logprobs"]) for a in mine])),
        }
    report: dict[str, Any] = {
        "answers": len(answers),
        "accuracy": sum(correct) / len(correct) if correct else None,
        "by_source": by_source,
        "rule": f"highest catch rate of wrong answers with false escalations <= "
        f"{max_false_escalation:.0%} (point estimate); ties: the lower threshold",
    }
    for signal in ("mean", "min"):
        values = [signal_value(answer["logprobs"], signal) for answer in answers]
        grid = threshold_grid(values)
        points = sweep(values, correct, grid)
        chosen = choose_threshold(points, max_false_escalation)
        report[signal] = {
            "auc_wrong": auc_with_ci(values, correct, resamples=resamples, seed=seed),
            "chosen": chosen.as_dict() if chosen else None,
            "sweep": [point.as_dict() for point in points],
            "table": format_table(
                [operating_point(values, correct, t) for t in table_thresholds(grid, chosen)],
                chosen,
            ),
        }
    chosen_mean = report["mean"]["chosen"]
    report["early_escalation_replay"] = (
        replay_early_escalation(
            answers,
            min_mean_logprob=chosen_mean["threshold"],
            min_tokens=min_tokens,
            window_tokens=window_tokens,
        )
        | {"min_tokens": min_tokens, "window_tokens": window_tokens}
        if chosen_mean
        else None
    )
    return report
