"""Judge data: (prompt, answer, label) rows in the outcomes format the router trainer reads.

The learned quality judge (serve_app.quality.judge) is trained by the router's own code: the same
encoder, head training, early stopping, calibration and export. Only its text differs: each
outcome's `prompt` holds `judge_text(prompt, answer)`, the pair the judge reads at serving time.

Judge JSONL rows: `prompt`, `answer`, `label` (1 = the answer is not good enough, escalate),
optional `id`, `source`, and `large_score` (quality of the large tier's answer, default 1:
escalating is assumed to fix the answer). `small_score` is 1 - label, so the router metrics
(APGR, CPT) read as "escalate when the judge says so".

Train with `label_rule: small_fails` and `early_stopping_metric: roc_auc`
(configs/judge_training_example.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router_training.data import Outcome, question_group, read_jsonl_rows
from serve_app.quality.judge_format import judge_text


def read_judge_jsonl(path: str | Path) -> list[Outcome]:
    """Judge rows → outcomes whose text is what the serving judge reads."""
    return read_jsonl_rows(path, _judge_outcome)


def _judge_outcome(row: dict, default_id: str) -> Outcome:
    label = int(row["label"])
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {row['label']!r}")
    prompt, answer = str(row["prompt"]), str(row["answer"])
    return Outcome(
        id=str(row.get("id", default_id)),
        prompt=judge_text(prompt, answer),
        small_score=float(1 - label),
        large_score=float(row.get("large_score", 1.0)),
        label=label,
        # Every answer to one question stays on one side of the split.
        group=question_group(prompt),
        source=row.get("source"),
    )


def judge_outcomes_from_correctness(
    outcomes: Sequence[Outcome], pass_score: float = 0.5
) -> list[Outcome]:
    """Judge data from outcomes that record correctness but not the answers (RouteLLM MMLU).

    Label 1 when the small model's answer scored below `pass_score`. With no answer text the
    judge reads the question alone (`judge_text(prompt, "") == prompt`): it learns which
    questions the small model gets wrong, not what a wrong answer looks like.
    """
    return [
        Outcome(
            id=o.id,
            prompt=judge_text(o.prompt, ""),
            small_score=o.small_score,
            large_score=o.large_score,
            label=int(o.small_score < pass_score),
            group=o.group,
            source=o.source,
        )
        for o in outcomes
    ]
