"""Chat workloads of the engine benchmarks, built with the model's tokenizer only.

`benchmarks.engine_levers` submits them to its engines and `benchmarks.prompt_audit` prices
their prompts: short questions from the cache benchmark's hand-written pairs, and MMLU
questions from the shared data folder (`--shared-dir`, else `$CASCADE_SHARED_DIR`, else the
`shared` folder beside the repo).
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAIRS_PATH = Path(__file__).resolve().parent / "data" / "cache_pairs.jsonl"
SHARED_DIR_ENV = "CASCADE_SHARED_DIR"
DEFAULT_SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
"""The folder of shared data beside the repo's checkout (`<repo>/../shared`)."""
MMLU_SUBDIR = Path("data") / "routellm-mmlu"
MODEL_NAME = "smollm2-135m-instruct"

SYSTEM_PROMPT_PREAMBLE = (
    "You are StudyBuddy, the tutoring assistant of an online course that prepares students "
    "for broad multiple-choice exams in science, history, law, medicine and the humanities. "
    "Follow these rules in every answer. Be accurate: if you are not sure, say so and explain "
    "what you would check. Be brief: answer in at most three sentences unless the student asks "
    "for more. Explain the reasoning behind an answer, not just the letter. Never invent "
    "citations, statistics or quotes. Use plain language and define any technical term the "
    "first time you use it. If a question is ambiguous, state the reading you chose. Do not "
    "help with cheating on a live exam. Keep a friendly, encouraging tone. The questions below "
    "show the style and level of the course material; students will ask about topics like "
    "these.\n\nExample course questions:\n"
)


def default_shared_dir() -> Path:
    """`$CASCADE_SHARED_DIR` if set, else the `shared` folder beside the repo."""
    return Path(os.environ.get(SHARED_DIR_ENV) or DEFAULT_SHARED_DIR)


def load_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def model_dir() -> Path:
    from devtools.models import prepare

    return prepare(MODEL_NAME)


def pair_questions() -> list[str]:
    """Distinct short questions from the cache benchmark's hand-written pairs."""
    seen: dict[str, None] = {}
    for line in PAIRS_PATH.read_text().splitlines():
        if line.strip():
            pair = json.loads(line)
            seen.setdefault(pair["stored"], None)
            seen.setdefault(pair["asked"], None)
    return list(seen)


def mmlu_prompts(limit: int, max_chars: int = 700, *, shared_dir: Path) -> list[str]:
    """MMLU questions with their options (the prompt column), shortest subjects excluded."""
    prompts: list[str] = []
    for path in sorted((shared_dir / MMLU_SUBDIR).glob("mmlu_*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                text = row["prompt"].removesuffix("Answer:").strip()
                if 80 <= len(text) <= max_chars:
                    prompts.append(text)
                    break  # one per subject: a varied set
        if len(prompts) >= limit:
            break
    return prompts


def cycle(items: Sequence[str], count: int) -> list[str]:
    if not items:
        raise ValueError("empty question source")
    return [items[i % len(items)] for i in range(count)]


def output_lengths(count: int, low: int, high: int, seed: int) -> list[int]:
    """Log-uniform lengths: realistic chat traffic has many short answers and a long tail."""
    rng = random.Random(seed)
    return [round(low * (high / low) ** rng.random()) for _ in range(count)]


def build_system_prompt(tokenizer: Any, target_tokens: int, *, shared_dir: Path) -> str:
    """A tutoring assistant's rules plus example course questions, about `target_tokens` long."""
    text = SYSTEM_PROMPT_PREAMBLE
    for example in mmlu_prompts(limit=57, shared_dir=shared_dir):
        candidate = f"{text}- {example}\n"
        if len(tokenizer.encode(candidate)) <= target_tokens:
            text = candidate  # else skip it: a shorter example further on may still fit
    return text


def chat(messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool = False) -> dict:
    return {"messages": messages, "max_tokens": max_tokens, "ignore_eos": ignore_eos}


def shared_prompt_requests(system_prompt: str, questions: Sequence[str], max_tokens: int) -> list:
    return [
        chat(
            [{"role": "system", "content": system_prompt}, {"role": "user", "content": q}],
            max_tokens,
        )
        for q in questions
    ]


def audit_requests(
    system_prompt: str, count: int, max_tokens: int, *, shared_dir: Path
) -> list[dict]:
    # Short questions alternating with longer MMLU items (question + options). The prefix
    # workload uses the pair questions from the start, the audit from the end: no repeats.
    short, long = list(reversed(pair_questions())), mmlu_prompts(limit=57, shared_dir=shared_dir)
    questions = [q for pair in zip(short, long, strict=False) for q in pair]
    return shared_prompt_requests(system_prompt, cycle(questions, count), max_tokens)


def chat_prompt_token_ids(tokenizer: Any, requests: Sequence[dict]) -> list[list[int]]:
    """Prompt tokens exactly as vLLM's `LLM.chat` builds them (the model's chat template)."""
    return [
        list(
            tokenizer.apply_chat_template(
                r["messages"], tokenize=True, add_generation_prompt=True, return_dict=False
            )
        )
        for r in requests
    ]
