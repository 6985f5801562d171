"""The learned judge's input text, without Ray: shared by serving (serve_app.quality.judge) and
by `router_training`, which trains the judge on exactly this text."""

from __future__ import annotations


def judge_text(prompt: str, answer: str) -> str:
    """The one text the judge classifier reads, at training and at serving time.

    The answer comes first, so truncation at max_length cuts the end of a long question, never
    the answer being judged. Without an answer (outcome data that records only correctness,
    such as RouteLLM's MMLU files) the text is the prompt alone: such a judge sees the question,
    not the answer.
    """
    answer = answer.strip()
    if not answer:
        return prompt
    return f"Answer: {answer}\n\nQuestion: {prompt}"
