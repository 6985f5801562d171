"""Build the default benchmark workload (`benchmarks/data/workload.jsonl`) from the shared data.

The mix a cascade sees in production, in a fixed order (seeded):
- MMLU questions from the shared RouteLLM data, easy (the weak model answered correctly) and
  hard (only the strong one did), with RouteLLM's correctness labels as the quality reference;
- everyday questions from the cache pair set (`cache_pairs.jsonl`, paraphrases labelled
  should-hit), each asked first as stored, later paraphrased, some also repeated verbatim;
- short answers (one sentence) and long ones (a detailed explanation).

    python -m benchmarks.build_workload                 # writes the default file
    python -m benchmarks.build_workload --mmlu-per-difficulty 50 --out /tmp/w.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from benchmarks.engine_workloads import DEFAULT_SHARED_DIR
from benchmarks.workload import DEFAULT_WORKLOAD, WorkloadItem

MMLU_DIR = Path(
    os.environ.get("CASCADE_MMLU_DIR", DEFAULT_SHARED_DIR / "data" / "routellm-mmlu")
)
PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COLUMN = "gpt-4-1106-preview"
MAX_MMLU_PROMPT_CHARS = 1200  # keep prefill reasonable on a 2-core CPU

MMLU_INSTRUCTION = "Answer the multiple-choice question with the letter of the correct option.\n\n"
SHORT_SUFFIX = " Answer in one sentence."
LONG_SUFFIX = " Explain in detail."
MAX_TOKENS = {"mmlu": 32, "short": 64, "long": 256}

# Keywords of a correct answer, for the questions of the pair set whose answer is a fact.
REFERENCES: dict[str, list[str]] = {
    "What is the capital of Australia?": ["canberra"],
    "How tall is Mount Everest?": ["8,848", "8848", "8,849", "8849", "29,0"],
    "Which river is the longest in Africa?": ["nile"],
    "What currency is used in Japan?": ["yen"],
    "Where is Machu Picchu located?": ["peru"],
    "What language do they speak in Brazil?": ["portuguese"],
    "What is the largest desert in the world?": ["antarctic", "sahara"],
    "What is the derivative of sin(x)?": ["cos"],
    "When did the Berlin Wall fall?": ["1989"],
    "Who built the pyramids of Giza?": ["egypt"],
    "Why is the sky blue?": ["scatter"],
    "What is DNA made of?": ["nucleotide"],
    "What is the boiling point of water?": ["100", "212"],
    "What is the speed of light?": ["299", "300,000", "186,"],
    "How far is the Moon from Earth?": ["384", "238,"],
    "What's the capital of France?": ["paris"],
    "How do I calculate the area of a circle?": ["πr", "pi r", "pi*r", "pi times", "π r"],
    "What is a prime number?": ["divisible", "divisor", "factor"],
    "What is the Pythagorean theorem?": ["hypotenuse", "a^2", "a²"],
    "What is photosynthesis?": ["light", "sunlight"],
}


def _chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _contaminated(mmlu_dir: Path) -> set[str]:
    path = mmlu_dir / "contaminated_prompts.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row.get("prompt") or row.get("train_prompt", "") for row in rows}


def mmlu_items(per_difficulty: int, rng: random.Random, mmlu_dir: Path) -> list[WorkloadItem]:
    """Easy (weak model right) and hard (weak wrong, strong right) MMLU questions."""
    excluded = _contaminated(mmlu_dir)
    easy, hard = [], []
    for path in sorted(mmlu_dir.glob("mmlu_*.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                prompt = row["prompt"]
                if prompt in excluded or len(prompt) > MAX_MMLU_PROMPT_CHARS:
                    continue
                weak, strong = row[WEAK_COLUMN] == "True", row[STRONG_COLUMN] == "True"
                if weak:
                    easy.append((path.stem, prompt, weak, strong))
                elif strong:
                    hard.append((path.stem, prompt, weak, strong))
    items = []
    for difficulty, pool in (("easy", easy), ("hard", hard)):
        for n, (subject, prompt, weak, strong) in enumerate(rng.sample(pool, per_difficulty)):
            item_id = f"mmlu-{difficulty}-{n}"
            items.append(
                WorkloadItem(
                    id=item_id,
                    group=item_id,
                    kind=f"mmlu_{difficulty}",
                    length="short",
                    messages=_chat(MMLU_INSTRUCTION + prompt),
                    max_tokens=MAX_TOKENS["mmlu"],
                    weak_correct=weak,
                    strong_correct=strong,
                    extra={"subject": subject.removeprefix("mmlu_")},
                )
            )
    return items


def paraphrase_items(
    groups: int, long_share: float, repeat_share: float, rng: random.Random
) -> list[tuple[WorkloadItem, list[WorkloadItem]]]:
    """(first ask, follow-ups) per question: the paraphrase, sometimes a verbatim repeat."""
    pairs = [json.loads(line) for line in PAIRS_PATH.read_text().splitlines() if line.strip()]
    paraphrases = [p for p in pairs if p["kind"] == "paraphrase" and p["should_hit"]]
    chosen = rng.sample(paraphrases, min(groups, len(paraphrases)))
    result = []
    for n, pair in enumerate(chosen):
        length = "long" if rng.random() < long_share else "short"
        group = f"faq-{n}"
        reference = REFERENCES.get(pair["stored"])
        first = _faq_item(group, "asked", pair["stored"], "faq_first", length, reference)
        follow_ups = [
            _faq_item(group, "paraphrase", pair["asked"], "faq_paraphrase", length, reference)
        ]
        if rng.random() < repeat_share:
            follow_ups.append(
                _faq_item(group, "repeat", pair["stored"], "faq_repeat", length, reference)
            )
        result.append((first, follow_ups))
    return result


def _faq_item(
    group: str, role: str, question: str, kind: str, length: str, reference: list[str] | None
) -> WorkloadItem:
    suffix = LONG_SUFFIX if length == "long" else SHORT_SUFFIX
    return WorkloadItem(
        id=f"{group}-{role}",
        group=group,
        kind=kind,
        length=length,
        messages=_chat(question + suffix),
        max_tokens=MAX_TOKENS[length],
        reference=reference,
    )


def interleave(
    singles: list[WorkloadItem],
    groups: list[tuple[WorkloadItem, list[WorkloadItem]]],
    rng: random.Random,
) -> list[WorkloadItem]:
    """A random order in which every follow-up comes after its group's first ask."""
    keyed: list[tuple[float, WorkloadItem]] = [(rng.random(), item) for item in singles]
    for first, follow_ups in groups:
        first_key = rng.random() * 0.7
        keyed.append((first_key, first))
        for follow_up in follow_ups:
            keyed.append((first_key + (1 - first_key) * rng.random(), follow_up))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def build_workload(
    mmlu_per_difficulty: int,
    faq_groups: int,
    long_share: float,
    repeat_share: float,
    seed: int,
    mmlu_dir: Path = MMLU_DIR,
) -> list[WorkloadItem]:
    rng = random.Random(seed)
    singles = mmlu_items(mmlu_per_difficulty, rng, mmlu_dir)
    groups = paraphrase_items(faq_groups, long_share, repeat_share, rng)
    return interleave(singles, groups, rng)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.build_workload", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--mmlu-per-difficulty", type=int, default=30)
    parser.add_argument("--faq-groups", type=int, default=40, help="questions asked 2-3 times")
    parser.add_argument("--long-share", type=float, default=0.25, help="share of long answers")
    parser.add_argument("--repeat-share", type=float, default=0.4, help="also repeated verbatim")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mmlu-dir", type=Path, default=MMLU_DIR, help="RouteLLM MMLU CSVs")
    parser.add_argument("--out", type=Path, default=DEFAULT_WORKLOAD)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    items = build_workload(
        args.mmlu_per_difficulty,
        args.faq_groups,
        args.long_share,
        args.repeat_share,
        args.seed,
        args.mmlu_dir,
    )
    args.out.write_text("".join(item.to_json() + "\n" for item in items))
    kinds: dict[str, int] = {}
    for item in items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    print(f"wrote {len(items)} requests to {args.out}: {kinds}")


if __name__ == "__main__":
    main()
