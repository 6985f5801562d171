"""A benchmark workload: chat requests with what is known about their answers.

One JSON object per line of `benchmarks/data/workload.jsonl` (built by
`python -m benchmarks.build_workload`):

    {"id": "mmlu-hard-3", "group": "mmlu-hard-3", "kind": "mmlu_hard", "length": "short",
     "messages": [...], "max_tokens": 32,
     "reference": null,                 # answer keywords, any of which marks a correct answer
     "weak_correct": false, "strong_correct": true}   # RouteLLM's labels for MMLU prompts

Requests of one `group` ask the same question (first asked, then paraphrased or repeated).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_WORKLOAD = Path(__file__).resolve().parent / "data" / "workload.jsonl"


@dataclass(frozen=True)
class WorkloadItem:
    id: str
    group: str
    kind: str
    length: str
    messages: list[dict[str, str]]
    max_tokens: int
    reference: list[str] | None = None
    weak_correct: bool | None = None
    strong_correct: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        row = {k: v for k, v in asdict(self).items() if v not in (None, {})}
        return json.dumps(row, ensure_ascii=False)

    def body(self, model: str, *, stream: bool = True, cache: bool = True) -> dict[str, Any]:
        """The OpenAI chat request for this item (deterministic, so it is cacheable)."""
        body: dict[str, Any] = {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if not cache:
            body["cache"] = False
        return body


def load_workload(path: Path = DEFAULT_WORKLOAD) -> list[WorkloadItem]:
    items = []
    for line in path.read_text().splitlines():
        if line.strip():
            items.append(WorkloadItem(**json.loads(line)))
    return items


def quick_subset(
    items: list[WorkloadItem], groups: int, *, short_only: bool = False
) -> list[WorkloadItem]:
    """Every request of `groups` groups, half of them asked more than once, in workload order.

    `short_only` keeps groups with short answers: a smoke run stays fast, and its answers end
    before `max_tokens` (only whole answers are cached, so its repeats can hit).
    """
    sizes: dict[str, int] = {}
    for item in items:
        if not short_only or item.length == "short":
            sizes[item.group] = sizes.get(item.group, 0) + 1
    # A smoke run takes groups asked three times (first, verbatim repeat, paraphrase) first:
    # a sure hit. Otherwise groups come in workload order.
    order = sorted(sizes, key=lambda g: -sizes[g]) if short_only else list(sizes)
    repeated = [g for g in order if sizes[g] > 1][: (groups + 1) // 2]
    single = [g for g in sizes if sizes[g] == 1][: groups - len(repeated)]
    keep = set(repeated) | set(single)
    return [item for item in items if item.group in keep]


def answer_is_correct(item: WorkloadItem, text: str) -> bool | None:
    """Whether an answer contains one of the item's reference keywords; None if unknown."""
    if not item.reference:
        return None
    lowered = text.lower()
    return any(keyword.lower() in lowered for keyword in item.reference)
