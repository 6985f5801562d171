"""Labelling own traffic: both tiers answer, answers are scored, reruns resume."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from router_training.cli import main
from router_training.data import read_jsonl
from router_training.labelling import (
    ReferenceJudge,
    TierClient,
    extract_choice,
    extract_number,
    label_prompts,
    read_prompts,
)

# What each tier of the stand-in remote LLM answers; the large one is always right here.
ANSWERS = {
    "cascade-small": {"mc": "I think (A).", "num": "That makes 41 apples.", "text": "paris"},
    "cascade-large": {"mc": "The answer is C.", "num": "So 42.", "text": "Paris."},
}
PROMPTS = [
    {"id": "mc", "prompt": "Which letter? A. x B. y C. z D. w\nAnswer:", "reference": "C"},
    {"id": "num", "prompt": "6 times 7 apples?", "answer": 42},
    {"id": "text", "prompt": "Capital of France?", "reference": "Paris"},
]


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A remote OpenAI-compatible LLM server (the real tiers cannot run in a unit test)."""

    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append(body)
        key = body["messages"][0]["content"].split("?")[0]
        prompt_id = next(p["id"] for p in PROMPTS if p["prompt"].startswith(key))
        if body["model"] not in ANSWERS:
            self._send(404, {"error": {"message": "unknown model"}})
            return
        content = ANSWERS[body["model"]][prompt_id]
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_llm() -> Iterator[str]:
    _FakeOpenAI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()
    server.server_close()


def _write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    return path


def test_label_scores_both_tiers_and_resumes(fake_llm: str, tmp_path: Path) -> None:
    prompts = _write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "labelled.jsonl"
    # A previous run labelled "mc" and was cut off in the middle of the next line.
    done = {"id": "mc", "prompt": PROMPTS[0]["prompt"], "small_score": 0.0, "large_score": 1.0}
    out.write_text(json.dumps(done) + "\n" + '{"id": "num", "pro')
    assert main(["label", str(prompts), "--out", str(out), "--base-url", fake_llm]) == 0
    by_id = {o.id: o for o in read_jsonl(out)}
    assert set(by_id) == {"mc", "num", "text"}
    assert (by_id["num"].small_score, by_id["num"].large_score) == (0.0, 1.0)
    assert (by_id["text"].small_score, by_id["text"].large_score) == (1.0, 1.0)
    # Only the two unfinished prompts were sent, to both tiers, pinned, uncached, greedy.
    sent = _FakeOpenAI.requests
    assert sorted((r["model"], r["messages"][0]["content"][:3]) for r in sent) == sorted(
        (m, p["prompt"][:3]) for m in ANSWERS for p in PROMPTS[1:]
    )
    assert all(r["cache"] is False and r["temperature"] == 0 for r in sent)
    # A rerun has nothing left to do.
    _FakeOpenAI.requests = []
    assert main(["label", str(prompts), "--out", str(out), "--base-url", fake_llm]) == 0
    assert _FakeOpenAI.requests == []


def test_unknown_tier_counts_as_failed_not_labelled(fake_llm: str, tmp_path: Path) -> None:
    client = TierClient(fake_llm)
    stats = label_prompts(
        read_prompts(_write_prompts(tmp_path / "p.jsonl")),
        client,
        ReferenceJudge(),
        tmp_path / "out.jsonl",
        small_model="no-such-model",
    )
    client.close()
    assert stats == {"skipped": 0, "labelled": 0, "failed": 3}


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("Answer: B", "B"),
        ("(C) because", "C"),
        ("D. Paris", "D"),
        ("the answer is a", "A"),
        ("no idea", None),
    ],
)
def test_extract_choice(answer: str, letter: str | None) -> None:
    assert extract_choice(answer) == letter


def test_extract_number_and_reference_judge() -> None:
    assert extract_number("so the total is 1,250.") == 1250.0
    assert extract_number("3/4 of it") == 0.75
    judge = ReferenceJudge()
    assert judge.score("q", "It is 12.0", "12") == 1.0
    assert judge.score("q", "It is 13", "12") == 0.0
    assert judge.score("q", "The Eiffel tower!", "eiffel tower") == 1.0
    with pytest.raises(RuntimeError, match="no judge"):
        judge.score("q", "an essay", None)


def test_label_against_the_live_cascade(cascade_url: str, tmp_path: Path) -> None:
    """Two prompts through both real tiers (SmolLM2 on vLLM CPU), a few tokens each."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": "sum", "prompt": "What is 2+2? Reply with a number.", "answer": 4})
        + "\n"
        + json.dumps({"id": "cap", "prompt": "Capital of France? One word.", "answer": "Paris"})
        + "\n"
    )
    out = tmp_path / "labelled.jsonl"
    args = [
        "label",
        str(prompts),
        "--out",
        str(out),
        "--base-url",
        f"{cascade_url}/v1",
        "--max-tokens",
        "8",
        "--concurrency",
        "2",
    ]
    assert main(args) == 0
    outcomes = {o.id: o for o in read_jsonl(out)}
    assert set(outcomes) == {"sum", "cap"}
    for outcome in outcomes.values():
        assert outcome.small_score in (0.0, 1.0) and outcome.large_score in (0.0, 1.0)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(row["small_answer"] and row["large_answer"] for row in rows)
