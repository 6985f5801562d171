"""Label your own traffic: answer each prompt with both tiers of a running deployment and
score the answers.

Requests pin a tier by model name (`cascade-small` / `cascade-large`), so the cascade neither
routes nor escalates them, and carry `"cache": false` so the semantic cache cannot answer
with an earlier reply. Answers are scored against a reference where the data has one
(multiple-choice letter, number, or normalised exact text) or by a pluggable `Judge` for
open-ended prompts. Results are appended to a JSONL file line by line; a rerun skips the ids
already there, so an interrupted run resumes.
"""

from __future__ import annotations

import importlib
import json
import re
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from tqdm.auto import tqdm


class LabellingError(RuntimeError):
    """A tier could not answer or an answer could not be scored."""


@dataclass(frozen=True)
class PromptItem:
    id: str
    prompt: str
    reference: str | None = None
    source: str | None = None


class Judge(Protocol):
    """Scores one answer in [0, 1] (1 = good enough); `reference` may be None."""

    def score(self, prompt: str, answer: str, reference: str | None) -> float: ...


# ---------------------------------------------------------------- reference judges

_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*\(?([A-J])\b\)?", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])[).:\s]", re.MULTILINE),
    re.compile(r"^\s*\(?([A-J])\)?\s*$", re.MULTILINE),
    re.compile(r"\(([A-J])\)"),
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_LETTER_REFERENCE = re.compile(r"^\(?([A-J])\)?$")


def extract_choice(answer: str) -> str | None:
    """The option letter an answer picks ("Answer: B", "(C) because...", "D. Paris")."""
    for pattern in _CHOICE_PATTERNS:
        match = pattern.search(answer)
        if match:
            return match.group(1).upper()
    return None


def extract_number(text: str) -> float | None:
    """The last number in a text ("… so the total is 1,250." → 1250.0; "3/4" → 0.75)."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    raw = matches[-1].replace(",", "")
    if "/" in raw:
        num, den = raw.split("/")
        return float(num) / float(den) if float(den) else None
    return float(raw)


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


class ReferenceJudge:
    """Scores against a reference: a choice letter, a number (relative tolerance), or text.

    Without a reference it defers to `open_ended` (an LLM judge, say) or refuses.
    """

    def __init__(self, open_ended: Judge | None = None, rel_tolerance: float = 1e-6) -> None:
        self.open_ended = open_ended
        self.rel_tolerance = rel_tolerance

    def score(self, prompt: str, answer: str, reference: str | None) -> float:
        if reference is None or not str(reference).strip():
            if self.open_ended is None:
                raise LabellingError("no reference answer and no judge for open-ended prompts")
            return self.open_ended.score(prompt, answer, reference)
        reference = str(reference).strip()
        letter = _LETTER_REFERENCE.match(reference.upper())
        if letter:
            return float(extract_choice(answer) == letter.group(1))
        expected = extract_number(reference) if _NUMBER.fullmatch(reference) else None
        if expected is not None:
            got = extract_number(answer)
            return float(
                got is not None
                and abs(got - expected) <= self.rel_tolerance * max(1.0, abs(expected))
            )
        return float(normalise_text(reference) == normalise_text(answer))


class ChatJudge:
    """LLM-as-a-judge for open-ended answers: asks an OpenAI-compatible model for a 1–10
    rating (MT-Bench style) and maps it to [0, 1]."""

    PROMPT = (
        "Rate the assistant's answer to the user's question for correctness and helpfulness "
        "on a scale of 1 to 10. Reply with the number only.\n\n[Question]\n{prompt}\n\n"
        "[Answer]\n{answer}"
    )

    def __init__(self, client: TierClient, model: str) -> None:
        self.client, self.model = client, model

    def score(self, prompt: str, answer: str, reference: str | None) -> float:
        reply = self.client.chat(self.model, self.PROMPT.format(prompt=prompt, answer=answer))
        rating = extract_number(reply)
        if rating is None:
            raise LabellingError(f"judge reply has no rating: {reply[:80]!r}")
        return min(max((rating - 1.0) / 9.0, 0.0), 1.0)


def load_judge(spec: str, **kwargs: Any) -> Judge:
    """`module:attribute` naming a Judge class or factory (called with `kwargs`)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"judge spec must look like 'package.module:Factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)(**kwargs)


# ---------------------------------------------------------------- the deployment


class TierClient:
    """Chat completions against an OpenAI-compatible base URL (e.g. http://host:8000/v1)."""

    def __init__(
        self,
        base_url: str,
        api_key: str = "router-labelling",
        max_tokens: int = 256,
        timeout_s: float = 180.0,
        bypass_cache: bool = True,
        http: httpx.Client | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.bypass_cache = bypass_cache
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"authorization": f"Bearer {api_key}"},
        )

    def chat(self, model: str, prompt: str) -> str:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        if self.bypass_cache:
            body["cache"] = False
        try:
            response = self._http.post("/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"] or ""
        except httpx.HTTPError as e:
            raise LabellingError(f"{model}: {type(e).__name__}: {e}") from e
        except (KeyError, IndexError, ValueError) as e:
            raise LabellingError(f"{model}: malformed chat completion: {e}") from e

    def close(self) -> None:
        self._http.close()


def read_prompts(path: str | Path) -> list[PromptItem]:
    """JSONL with `prompt` and optional `id`, `reference` (or `answer`), `source`."""
    items = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        reference = row.get("reference", row.get("answer"))
        items.append(
            PromptItem(
                id=str(row.get("id", f"{Path(path).stem}:{line_no}")),
                prompt=row["prompt"],
                reference=None if reference is None else str(reference),
                source=row.get("source"),
            )
        )
    return items


def done_ids(path: Path) -> set[str]:
    """Ids already labelled; a line cut short by an interrupted run is dropped from the file
    (that prompt is labelled again), so the file stays valid JSONL."""
    if not path.is_file():
        return set()
    ids, kept, dropped = set(), [], False
    for line in path.read_text().splitlines():
        try:
            ids.add(json.loads(line)["id"])
            kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped = True
    if dropped:
        path.write_text("".join(f"{line}\n" for line in kept))
    return ids


def label_prompts(
    items: Sequence[PromptItem],
    client: TierClient,
    judge: Judge,
    out_path: str | Path,
    small_model: str = "cascade-small",
    large_model: str = "cascade-large",
    concurrency: int = 4,
) -> dict[str, int]:
    """Answer every not-yet-labelled prompt with both tiers, score, append to `out_path`."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [item for item in items if item.id not in done]

    def label_one(item: PromptItem) -> dict[str, Any]:
        small = client.chat(small_model, item.prompt)
        large = client.chat(large_model, item.prompt)
        return {
            "id": item.id,
            "prompt": item.prompt,
            "small_score": judge.score(item.prompt, small, item.reference),
            "large_score": judge.score(item.prompt, large, item.reference),
            "source": item.source,
            "reference": item.reference,
            "small_answer": small,
            "large_answer": large,
        }

    failed = 0
    with (
        out.open("a") as f,
        ThreadPoolExecutor(max_workers=concurrency) as pool,
        tqdm(total=len(todo), desc="labelling", unit="prompt") as bar,
    ):
        for row in pool.map(_capture(label_one), todo):
            if isinstance(row, LabellingError):
                failed += 1
            else:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
            bar.update(1)
    return {"skipped": len(items) - len(todo), "labelled": len(todo) - failed, "failed": failed}


def _capture(fn):
    def run(item: PromptItem):
        try:
            return fn(item)
        except LabellingError as e:
            tqdm.write(f"{item.id}: {e}")
            return e

    return run
