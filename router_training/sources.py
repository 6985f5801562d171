"""Outcomes from several sources (benchmarks) at once, for a router that must carry across them.

Each source is read from where the shared data keeps it (RouteLLM CSVs or the generic JSONL),
capped to `max_prompts` by a seeded sample so one large benchmark does not swamp the rest,
and tagged `<source name>/<sub-source>` (e.g. `mmlu/anatomy`, `mmlu_pro/law`). A question that
appears in two sources (MMLU-Pro reuses MMLU questions with more options) gets one group key
in both, so splits and leave-one-source-out training keep it on one side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from router_training.config import SourceConfig
from router_training.data import _OPTIONS_START, Outcome, read_jsonl, read_routellm

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def question_key(prompt: str) -> str:
    """The question without its options, as lowercase alphanumerics: the same for an MMLU
    question and its MMLU-Pro version."""
    stem = _OPTIONS_START.split(prompt, maxsplit=1)[0]
    normalised = _NON_ALNUM.sub(" ", stem.lower()).strip()
    return hashlib.sha1(normalised.encode()).hexdigest()[:16]


def dataset_of(outcome: Outcome) -> str:
    """The source name an outcome was loaded under (`mmlu` of `mmlu/anatomy`)."""
    return (outcome.source or "").split("/", 1)[0]


def load_source(source: SourceConfig, seed: int) -> list[Outcome]:
    if source.format == "routellm":
        outcomes = read_routellm([source.path])
    else:
        outcomes = read_jsonl(source.path)
    tagged = []
    for o in outcomes:
        sub = (o.source or "").split("/", 1)[-1] if o.source else ""
        name = source.name if not sub or sub == source.name else f"{source.name}/{sub}"
        tagged.append(
            replace(o, id=f"{source.name}:{o.id}", source=name, group=question_key(o.prompt))
        )
    if source.max_prompts is not None and source.max_prompts < len(tagged):
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(tagged))[: source.max_prompts])
        tagged = [tagged[i] for i in keep]
    return tagged


def load_sources(sources: Sequence[SourceConfig], seed: int) -> list[Outcome]:
    return [o for source in sources for o in load_source(source, seed)]
