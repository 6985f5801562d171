"""Asking labelled questions in a parseable form, and grading the answers automatically.

Multiple choice (MMLU, MMLU-Pro) asks for the option's letter; MATH asks for the final answer
in `\\boxed{}`. Grading reads the answer the way a lenient human grader would: the letter after
"answer is", a leading letter, the one option letter named, or the one option's text quoted;
for MATH the last `\\boxed{}`, else the stated final answer, else the last number, compared as
normalised text or as numbers. An answer nothing can be read from is wrong (`parsed: None`).
Pure functions: the calibration's tests run them on synthetic answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from benchmarks.labelled_questions import LETTERS, split_choice_prompt

AnswerStyle = Literal["direct", "reasoned"]

CHOICE_INSTRUCTION = "Reply with the letter of the correct option only."
MATH_INSTRUCTION = "Give only the final answer, written as \\boxed{answer}."
REASONED_CHOICE_INSTRUCTION = (
    "Think it through in a few sentences, then finish with 'The answer is X', where X is the "
    "letter of the correct option."
)
REASONED_MATH_INSTRUCTION = (
    "Solve it in a few short steps, then write the final answer as \\boxed{answer}."
)


def question_messages(row: dict[str, Any], style: AnswerStyle = "direct") -> list[dict[str, str]]:
    """The chat messages asking one labelled question.

    `direct` asks for the answer alone (a few tokens: the confidence of the answer itself);
    `reasoned` lets the model reason first (long answers, where stopping early can save).
    """
    if row["kind"] == "choice":
        body = row["prompt"].strip().removesuffix("Answer:").strip()
        instruction = CHOICE_INSTRUCTION if style == "direct" else REASONED_CHOICE_INSTRUCTION
    else:
        body = row["prompt"].strip()
        instruction = MATH_INSTRUCTION if style == "direct" else REASONED_MATH_INSTRUCTION
    return [{"role": "user", "content": f"{body}\n\n{instruction}"}]


@dataclass(frozen=True)
class Grade:
    correct: bool
    parsed: str | None
    """What was read from the answer (a letter, or a normalised final answer); None: nothing."""


def grade_answer(row: dict[str, Any], text: str) -> Grade:
    """Grade one answer against the row's gold answer."""
    if row["kind"] == "choice":
        _, options = split_choice_prompt(row["prompt"])
        letter = extract_choice(text, row.get("choices") or len(options), options)
        return Grade(letter == row["answer"], letter)
    final = extract_math_answer(text)
    return Grade(final is not None and math_answers_equal(final, row["answer"]), final)


# ---- multiple choice ----------------------------------------------------------------------

_STATED_LETTER = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|:)?\s*(?:option\s*)?[\(\[]?\s*([A-J])\b(?![a-z'])",
    re.IGNORECASE,
)
_LEADING_LETTER = re.compile(r"^\W{0,3}([A-J])[\)\].:]")
_LONE_LETTER = re.compile(r"(?<![A-Za-z'])([A-J])(?![A-Za-z'])")
# "A cat ..." or "I think": an article or pronoun, not an option letter.
_WORD_LIKE = re.compile(r"^[AI] [a-z]")


def extract_choice(text: str, choices: int, options: list[str] | None = None) -> str | None:
    """The option letter an answer names, or None. Letters past `choices` do not count."""
    valid = LETTERS[:choices]
    for match in _STATED_LETTER.finditer(text):
        letter = match.group(1).upper()
        if letter in valid and match.group(1).isupper():
            return letter
    leading = _LEADING_LETTER.match(text.strip())  # "B. London", "(C)"
    if leading and leading.group(1) in valid:
        return leading.group(1)
    named = {
        match.group(1)
        for match in _LONE_LETTER.finditer(text)
        if match.group(1) in valid and not _WORD_LIKE.match(text[match.start() :])
    }
    if len(named) == 1:  # "B", "I think it's C"; not "B or C"
        return named.pop()
    if options:
        answer = _words(text)
        quoted = [
            LETTERS[i]
            for i, option in enumerate(options[:choices])
            if option.strip() and _words(option) in answer
        ]
        if len(quoted) == 1:
            return quoted[0]
    return None


def _words(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) + " "


# ---- MATH -----------------------------------------------------------------------------------

_FINAL_ANSWER = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?")


def extract_math_answer(text: str) -> str | None:
    """The final answer of a MATH solution: last `\\boxed{}`, stated answer, or last number."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return normalise_math(boxed)
    stated = _FINAL_ANSWER.findall(text)
    if stated:
        value = re.split(r"\.\s|\n", stated[-1].strip())[0].strip().strip("$")
        number = _NUMBER.match(value)  # "17,700 miles": the number, not its unit
        value = normalise_math(number.group(0) if number else value)
        if value:
            return value
    numbers = _NUMBER.findall(text)
    return normalise_math(numbers[-1]) if numbers else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for i in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[brace + 1 : i]
    return text[brace + 1 :]  # cut off by max_tokens: what was written of it


_DROPPED = ("\\left", "\\right", "\\!", "\\,", "\\;", "$", "^\\circ", "^{\\circ}", "\\%", "%")


def normalise_math(answer: str) -> str:
    """A MATH answer in one spelling: no `$`, spaces, `\\left`, units in `\\text{}`, `dfrac`."""
    value = answer.strip()
    value = re.sub(r"\\text\{\s*[a-zA-Z ]*\}", "", value)  # units: "5 \text{ cm}"
    value = re.sub(r"\\(?:mbox|mathrm|textbf)\{([^}]*)\}", r"\1", value)
    for token in _DROPPED:
        value = value.replace(token, "")
    value = value.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    value = re.sub(r"\s+", "", value).rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", value):
        value = value.replace(",", "")
    return value


def math_answers_equal(given: str, gold: str) -> bool:
    given, gold = normalise_math(given), normalise_math(gold)
    if given == gold:
        return True
    a, b = _as_number(given), _as_number(gold)
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def _as_number(value: str) -> float | None:
    frac = re.fullmatch(r"(-?)\\frac\{?(-?\d+)\}?\{?(\d+)\}?", value)
    if frac:
        sign = -1 if frac.group(1) else 1
        return sign * float(Fraction(int(frac.group(2)), int(frac.group(3))))
    try:
        if "/" in value:
            numerator, denominator = value.split("/", 1)
            return float(Fraction(int(numerator), int(denominator)))
        return float(value)
    except (ValueError, ZeroDivisionError):
        return None
