"""Questions with known answers from the shared data sets: MMLU, MMLU-Pro and MATH level 5.

The shared outcome files record whether a small and a large model answered each question
correctly, not the correct answer itself. `benchmarks/data/answer_keys.json` adds the gold
answers of 192 MMLU-Pro questions and 88 MATH level-5 problems from the public result files
named in its `_provenance` (the same upstream commits the shared outcomes were built from).

- MMLU-Pro questions whose MMLU-Pro source is MMLU (`ori_mmlu`) are asked in their original
  four-option MMLU form from `routellm-mmlu`: the gold option's text is found among the MMLU
  options, which both gives the MMLU letter and checks the key (a question whose gold text is
  not among them is dropped).
- The other MMLU-Pro questions (STEM-Ez, TheoremQA, SciBench) are asked as MMLU-Pro (4 to 10
  options), so the two multiple-choice sets never share a question.
- MATH level-5 problems are asked as they are; their answers are short (mostly integers).

`python -m benchmarks.labelled_questions` writes `benchmarks/data/labelled_questions.jsonl`
(one object a line: id, source, kind, prompt, answer, choices, subject, and the reference
model's recorded outcome), which `benchmarks.confidence_calibration` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.engine_workloads import SHARED_DIR_ENV, default_shared_dir

DATA_DIR = Path(__file__).resolve().parent / "data"
ANSWER_KEYS_PATH = DATA_DIR / "answer_keys.json"
LABELLED_QUESTIONS_PATH = DATA_DIR / "labelled_questions.jsonl"
LETTERS = "ABCDEFGHIJ"
_OPTION = re.compile(r"^([A-J])\. (.*)$")


def split_choice_prompt(prompt: str) -> tuple[str, list[str]]:
    """(question, option texts) of a prompt laid out as question, `A. ...` lines, `Answer:`."""
    lines = prompt.rstrip().split("\n")
    if lines and lines[-1].strip() == "Answer:":
        lines = lines[:-1]
    options: list[str] = []
    while lines and (match := _OPTION.match(lines[-1])):
        options.insert(0, match.group(2))
        lines = lines[:-1]
    return "\n".join(lines).strip(), options


def _normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {row["id"]: row for row in rows}


def _mmlu_by_question(mmlu_dir: Path) -> dict[str, tuple[str, int, dict[str, str]]]:
    """MMLU test rows by normalised question text: (subject, row number, row)."""
    # RouteLLM excludes these evaluation prompts (they overlap its training data).
    contaminated = {
        json.loads(line)["eval_prompt"]
        for line in (mmlu_dir / "contaminated_prompts.jsonl").read_text().splitlines()
        if line.strip()
    }
    index: dict[str, tuple[str, int, dict[str, str]]] = {}
    for path in sorted(mmlu_dir.glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle)):
                if row["prompt"] in contaminated:
                    continue
                question, _ = split_choice_prompt(row["prompt"])
                index.setdefault(_normalised(question), (subject, number, row))
    return index


def _mmlu_row(
    key_id: str, pro: dict[str, Any], letter: str, mmlu: dict[str, tuple[str, int, dict[str, str]]]
) -> dict[str, Any] | None:
    """The MMLU form of an MMLU-Pro question from MMLU, if its gold text is an MMLU option."""
    question, pro_options = split_choice_prompt(pro["prompt"])
    found = mmlu.get(_normalised(question))
    if found is None:
        return None
    subject, number, row = found
    _, options = split_choice_prompt(row["prompt"])
    gold_text = _normalised(pro_options[LETTERS.index(letter)])
    matches = [i for i, option in enumerate(options) if _normalised(option) == gold_text]
    if len(matches) != 1:
        return None
    return {
        "id": f"mmlu/{subject}/{number}",
        "source": "mmlu",
        "kind": "choice",
        "prompt": row["prompt"],
        "answer": LETTERS[matches[0]],
        "choices": len(options),
        "subject": subject,
        "key_from": key_id,
        "reference_model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "reference_correct": row["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True",
    }


def build_labelled_questions(shared_dir: Path, keys_path: Path = ANSWER_KEYS_PATH) -> list[dict]:
    """Join the answer keys with the shared data: MMLU, MMLU-Pro and MATH rows, checked."""
    keys = json.loads(keys_path.read_text())
    data = shared_dir / "data"
    pro = _read_jsonl(data / "router-outcomes" / "mmlu_pro.jsonl")
    math = _read_jsonl(data / "router-outcomes" / "math_l5.jsonl")
    mmlu = _mmlu_by_question(data / "routellm-mmlu")
    rows: list[dict[str, Any]] = []
    for key_id, (letter, origin) in keys["mmlu_pro"].items():
        record = pro[key_id]
        if origin == "ori_mmlu":
            row = _mmlu_row(key_id, record, letter, mmlu)
            if row is not None:
                rows.append(row)
            continue
        _, options = split_choice_prompt(record["prompt"])
        if LETTERS.index(letter) >= len(options):
            raise ValueError(f"{key_id}: key {letter} but only {len(options)} options")
        rows.append(
            {
                "id": key_id,
                "source": "mmlu_pro",
                "kind": "choice",
                "prompt": record["prompt"],
                "answer": letter,
                "choices": len(options),
                "subject": record["source"].removeprefix("mmlu_pro/"),
                "key_from": origin,
                "reference_model": record["small_model"],
                "reference_correct": record["small_score"] >= 1.0,
            }
        )
    for key_id, answer in keys["math_l5"].items():
        record = math[key_id]
        rows.append(
            {
                "id": key_id,
                "source": "math",
                "kind": "math",
                "prompt": record["prompt"],
                "answer": answer,
                "choices": 0,
                "subject": "math_l5",
                "key_from": "math_l5",
                "reference_model": record["small_model"],
                "reference_correct": record["small_score"] >= 1.0,
            }
        )
    return rows


def load_labelled_questions(path: Path = LABELLED_QUESTIONS_PATH) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sample_questions(
    rows: Sequence[dict[str, Any]], count: int, sources: Sequence[str], seed: int = 0
) -> list[dict[str, Any]]:
    """`count` rows stratified over `sources` (as equal a share each as the sources hold),
    seeded; a source with fewer rows than its share leaves the rest to the others."""
    rng = random.Random(seed)
    pools = {source: [row for row in rows if row["source"] == source] for source in sources}
    for pool in pools.values():
        rng.shuffle(pool)
    taken: dict[str, int] = dict.fromkeys(sources, 0)
    while sum(taken.values()) < count:
        open_sources = [s for s in sources if taken[s] < len(pools[s])]
        if not open_sources:
            break
        for source in open_sources:
            if sum(taken.values()) < count:
                taken[source] += 1
    sample = [row for source in sources for row in pools[source][: taken[source]]]
    rng.shuffle(sample)  # interleaved, so a cut-short run still covers every source
    return sample


def ask_gateway(
    base_url: str,
    requests: Sequence[tuple[str, dict[str, Any], dict[str, str]]],
    *,
    concurrency: int,
    desc: str,
    timeout_s: float = 300.0,
) -> list[dict[str, Any]]:
    """POST each (path, body, headers) to the gateway, at most `concurrency` at a time.

    Returns per request: status, JSON body, response headers, latency_s and error (a failed
    request is reported, not raised, so one error does not lose a long run).
    """
    return asyncio.run(_ask_all(base_url, requests, concurrency, desc, timeout_s))


async def _ask_all(
    base_url: str,
    requests: Sequence[tuple[str, dict[str, Any], dict[str, str]]],
    concurrency: int,
    desc: str,
    timeout_s: float,
) -> list[dict[str, Any]]:
    import httpx
    from tqdm.auto import tqdm

    gate = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(requests), desc=desc, unit="req")
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as client:

        async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
            async with gate:
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=body, headers=headers)
                    result: dict[str, Any] = {
                        "status": response.status_code,
                        "json": response.json(),
                        "headers": dict(response.headers),
                        "error": None if response.is_success else response.text[:300],
                    }
                except (httpx.HTTPError, ValueError) as e:
                    result = {"status": None, "json": None, "headers": {}, "error": repr(e)}
                result["latency_s"] = time.perf_counter() - started
                progress.update()
                return result

        results = await asyncio.gather(*(one(*request) for request in requests))
    progress.close()
    return list(results)


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared-dir",
        type=Path,
        default=default_shared_dir(),
        help=f"the shared folder (default: ${SHARED_DIR_ENV}, else `shared` beside the repo)",
    )
    parser.add_argument("--out", type=Path, default=LABELLED_QUESTIONS_PATH)
    args = parser.parse_args(argv)
    rows = build_labelled_questions(args.shared_dir)
    write_jsonl(rows, args.out)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    print(f"{len(rows)} labelled questions -> {args.out}: {counts}")


if __name__ == "__main__":
    main()
