"""Router training data: per-prompt outcomes of the small and large model, and their splits.

One record per prompt (`Outcome`), stored as JSONL with the fields of the generic format:
`prompt`, `small_score`, `large_score` (quality in [0, 1], e.g. 1 = correct), optional
`label` (1 = the small model is not good enough), plus `id`, `group` and `source`.

Splits keep every `group` (the question with its whitespace and answer options stripped) on
one side, so a duplicated question cannot be trained on and evaluated on at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

ROUTELLM_WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
ROUTELLM_STRONG_COLUMN = "gpt-4-1106-preview"
CONTAMINATED_FILE = "contaminated_prompts.jsonl"

LabelRule = Literal["large_better", "small_fails"]
SplitName = Literal["train", "val", "test"]

_OPTIONS_START = re.compile(r"\n\s*A[.)]\s")
_WHITESPACE = re.compile(r"\s+")


class DataError(ValueError):
    """A data file is malformed; the message names the file and the line or column."""


@dataclass(frozen=True)
class Outcome:
    id: str
    prompt: str
    small_score: float
    large_score: float
    label: int | None = None
    group: str = ""
    source: str | None = None

    def __post_init__(self) -> None:
        for name in ("small_score", "large_score"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise DataError(f"{self.id}: {name} must be a finite number, got {value!r}")
        if self.label not in (None, 0, 1):
            raise DataError(f"{self.id}: label must be 0, 1 or absent, got {self.label!r}")
        if not self.group:
            object.__setattr__(self, "group", question_group(self.prompt))


def question_group(prompt: str) -> str:
    """Key shared by copies of one question: its stem, case- and whitespace-normalised."""
    stem = _OPTIONS_START.split(prompt, maxsplit=1)[0]
    normalised = _WHITESPACE.sub(" ", stem).strip().lower()
    return hashlib.sha1(normalised.encode()).hexdigest()[:16]


def router_label(outcome: Outcome, rule: LabelRule, pass_score: float = 0.5) -> int:
    """1 when the prompt should go to the large tier.

    `large_better`: the large model scored higher (RouteLLM's "strong wins"); prompts both
    models get right *or wrong* stay small, since the large tier would not change the answer.
    `small_fails`: the small model scored below `pass_score`. An explicit `label` wins.
    """
    if outcome.label is not None:
        return outcome.label
    if rule == "large_better":
        return int(outcome.large_score > outcome.small_score)
    return int(outcome.small_score < pass_score)


# ---------------------------------------------------------------- reading and writing


def read_jsonl(path: str | Path) -> list[Outcome]:
    """Read the generic format (`prompt`, `small_score`, `large_score`, optional `label`)."""
    return read_jsonl_rows(path, _outcome_from_row)


def read_jsonl_rows(
    path: str | Path, outcome_from_row: Callable[[dict, str], Outcome]
) -> list[Outcome]:
    """One outcome per non-empty line; a bad line raises DataError naming the file and line."""
    path = Path(path)
    outcomes = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                outcomes.append(outcome_from_row(row, f"{path.stem}:{line_no}"))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{line_no}: {type(e).__name__}: {e}") from e
            except DataError as e:
                raise DataError(f"{path}:{line_no}: {e}") from e
    return outcomes


def _outcome_from_row(row: dict, default_id: str) -> Outcome:
    # Other fields (answers, references written by `label`) are carried by the file, not here.
    label = row.get("label")
    return Outcome(
        id=str(row.get("id", default_id)),
        prompt=str(row["prompt"]),
        small_score=float(row["small_score"]),
        large_score=float(row["large_score"]),
        label=None if label is None else int(label),
        group=str(row.get("group") or ""),
        source=row.get("source"),
    )


def write_jsonl(outcomes: Iterable[Outcome], path: str | Path) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w") as f:
        for outcome in outcomes:
            f.write(json.dumps(asdict(outcome), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_routellm(
    paths: Sequence[str | Path],
    weak_column: str = ROUTELLM_WEAK_COLUMN,
    strong_column: str = ROUTELLM_STRONG_COLUMN,
    contaminated: Sequence[str | Path] | None = None,
) -> list[Outcome]:
    """RouteLLM outcome CSVs (`prompt` plus one correctness/score column per model).

    Directories expand to their `*.csv` files; each file's stem (minus an `mmlu_` prefix) is
    the `source`. Prompts listed in the contaminated files (`eval_prompt`, RouteLLM's format)
    are dropped; by default a `contaminated_prompts.jsonl` beside the CSVs is used.
    """
    import pandas as pd

    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        files.extend(sorted(p.glob("*.csv")) if p.is_dir() else [p])
    if not files:
        raise DataError(f"no CSV files in {[str(p) for p in paths]}")
    if contaminated is None:
        contaminated = sorted({f.parent / CONTAMINATED_FILE for f in files} - {None})
        contaminated = [c for c in contaminated if c.is_file()]
    excluded = _contaminated_prompts(contaminated)
    outcomes = []
    for file in files:
        frame = pd.read_csv(file)
        missing = {"prompt", weak_column, strong_column} - set(frame.columns)
        if missing:
            raise DataError(f"{file}: missing columns {sorted(missing)}")
        source = file.stem.removeprefix("mmlu_")
        for row_no, row in enumerate(frame.itertuples(index=False)):
            prompt = row.prompt
            if prompt in excluded:
                continue
            record = dict(zip(frame.columns, row, strict=True))
            outcomes.append(
                Outcome(
                    id=f"{source}:{row_no}",
                    prompt=prompt,
                    small_score=_score(record[weak_column], file, weak_column),
                    large_score=_score(record[strong_column], file, strong_column),
                    source=source,
                )
            )
    return outcomes


def _contaminated_prompts(files: Sequence[str | Path]) -> set[str]:
    prompts: set[str] = set()
    for file in files:
        for line in Path(file).read_text().splitlines():
            if line.strip():
                prompts.add(json.loads(line)["eval_prompt"])
    return prompts


def _score(value: object, file: Path, column: str) -> float:
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return float(value.strip().lower() == "true")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise DataError(f"{file}: column {column!r} has a non-score value {value!r}") from e


# ---------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    train: list[Outcome]
    val: list[Outcome]
    test: list[Outcome]

    def ids(self) -> dict[str, list[str]]:
        return {name: [o.id for o in getattr(self, name)] for name in ("train", "val", "test")}


def split_by_group(
    outcomes: Sequence[Outcome],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    stratify_by_source: bool = True,
) -> Split:
    """Random split of question groups, per source when sources are known.

    Every copy of a question lands on the same side. Within each source the groups are
    shuffled with `seed` and cut at the fractions, so every subject is represented in each
    split in proportion to its size.
    """
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("need 0 <= val_fraction, 0 < test_fraction, and their sum < 1")
    by_source: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for outcome in outcomes:
        source = (outcome.source or "") if stratify_by_source else ""
        by_source[source][outcome.group].append(outcome)
    # A group spanning two sources stays in the first source it was seen in.
    seen: set[str] = set()
    parts: dict[str, list[Outcome]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(seed)
    for source in sorted(by_source):
        groups = [g for g in sorted(by_source[source]) if g not in seen]
        seen.update(groups)
        order = rng.permutation(len(groups))
        n_test = round(len(groups) * test_fraction)
        n_val = round(len(groups) * val_fraction)
        for rank, index in enumerate(order):
            name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            for key in (s for s in by_source if groups[index] in by_source[s]):
                parts[name].extend(by_source[key][groups[index]])
    return Split(parts["train"], parts["val"], parts["test"])


def split_from_ids(outcomes: Sequence[Outcome], ids: dict[str, list[str]]) -> Split:
    """Rebuild a split saved with `Split.ids()` (e.g. the one a checkpoint was trained on)."""
    by_id = {o.id: o for o in outcomes}
    missing = [i for name in ids for i in ids[name] if i not in by_id]
    if missing:
        raise DataError(
            f"{len(missing)} ids of the saved split are not in the data, e.g. {missing[:3]}"
        )
    return Split(*([by_id[i] for i in ids.get(name, [])] for name in ("train", "val", "test")))


def stratified_subset(
    outcomes: Sequence[Outcome], size: int, seed: int, rule: LabelRule
) -> list[Outcome]:
    """`size` outcomes with the label balance of the whole (for fast CI runs)."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_label[router_label(outcome, rule)].append(outcome)
    chosen: list[Outcome] = []
    for label in sorted(by_label):
        items = by_label[label]
        take = max(1, round(size * len(items) / len(outcomes)))
        chosen.extend(items[i] for i in rng.permutation(len(items))[:take])
    return [chosen[i] for i in rng.permutation(len(chosen))]


def relabel(outcomes: Sequence[Outcome], rule: LabelRule) -> list[Outcome]:
    return [replace(o, label=router_label(o, rule)) for o in outcomes]
