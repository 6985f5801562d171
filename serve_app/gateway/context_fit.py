"""Whether a request fits each tier's context, counted with the tier's own tokenizer before any
tier call.

A routed prompt too long for the small tier but within the large tier's context goes to the
large tier (`x-cascade-route-reason: context`); one no tier holds is refused with OpenAI's 400
`context_length_exceeded`, naming the limit and the counted tokens; a pinned request is held to
its own tier's limit.

A tier holds a request when its prompt plus the requested `max_tokens` (without one: a single
answer token, as vLLM requires) fits the tier's `max_model_len`. The prompt is counted as the
engine counts it: a chat is rendered with the tier's chat template (tools, generation prompt)
and encoded without added special tokens, a completion prompt is encoded plainly.

Each tier's tokenizer comes from its engine's source (`engine_kwargs.tokenizer`, else the
model source; a `packaged://` model's prepared directory, so nothing is fetched from a hub
locally), loaded once per source in a background thread. A tier whose tokenizer cannot be
loaded (no network, a gated repo, an unprepared packaged model) is logged once and left
uncounted: its engine then judges the length itself, as before, and the quality fallback
escalates a routed request the small tier's engine refuses for its length.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from serve_app.accounting.request_trace import RequestTrace
from serve_app.config import TIER_NAMES, CascadeConfig, TierConfig, TierName
from serve_app.model_sources import resolve_model_source
from serve_app.protocol.errors import ContextLengthExceededError
from serve_app.protocol.openai_api import RequestKind, requested_max_tokens

logger = logging.getLogger("ray.serve")

# Without max_tokens the engine generates until the context is full. A routed request whose
# prompt leaves the small tier less than this goes to a tier with more room: the small answer
# would be cut by the context and escalated as truncated, paying for both tiers.
ANSWER_RESERVE_TOKENS = 256
# Every token of a byte-level BPE (or byte-fallback SentencePiece) tokenizer covers at least
# one byte of the text, so UTF-8 bytes bound the count from above; the slack covers the few
# tokens a tokenizer adds of its own (BOS, a leading space marker).
_ADDED_TOKENS_SLACK = 8


@dataclass(frozen=True)
class TokenizerSource:
    """Where a tier's engine gets its tokenizer from (vLLM's engine arguments)."""

    name: str
    revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def of_tier(cls, tier: TierConfig) -> TokenizerSource:
        kwargs = tier.engine_kwargs
        return cls(
            name=kwargs.get("tokenizer") or tier.model_source,
            revision=kwargs.get("tokenizer_revision") or kwargs.get("revision"),
            trust_remote_code=bool(kwargs.get("trust_remote_code", False)),
        )


def load_tokenizer(source: TokenizerSource) -> Any:
    """The tokenizer (with its chat template) a tier's engine uses."""
    from transformers import AutoTokenizer  # heavy: only where prompts are counted

    return AutoTokenizer.from_pretrained(
        resolve_model_source(source.name),
        revision=source.revision,
        trust_remote_code=source.trust_remote_code,
    )


def _template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as vLLM hands them to a chat template: text parts joined by newlines, tool
    call arguments parsed from their JSON strings."""
    rendered = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = "\n".join(part.get("text", "") for part in content)
        elif content is None:
            message["content"] = ""
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [_parsed_tool_call(call) for call in message["tool_calls"]]
        rendered.append(message)
    return rendered


def _developer_as_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM's rendering for a template without a `developer` role: developer messages become
    system ones, merged into one system message up front when there are several or it is not
    the first."""
    if not any(m["role"] == "developer" for m in messages):
        return messages
    converted = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    systems = [m for m in converted if m["role"] == "system"]
    if len(systems) == 1 and converted[0]["role"] == "system":
        return converted
    merged = "\n\n".join(m["content"] for m in systems if m["content"])
    return [{"role": "system", "content": merged}, *(m for m in converted if m["role"] != "system")]


def _knows_developer_role(template: Any) -> bool:
    return isinstance(template, str) and ('"developer"' in template or "'developer'" in template)


def _parsed_tool_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"] or "{}")
    except json.JSONDecodeError:
        arguments = {}  # as vLLM does with malformed arguments in the history
    return {**call, "function": {**function, "arguments": arguments}}


def rendered_prompts(tokenizer: Any, body: dict[str, Any], kind: RequestKind) -> list[str]:
    """The text(s) the engine tokenizes for this request: one per completion prompt, or the
    chat rendered by the tokenizer's chat template."""
    if kind == "completion":
        prompt = body["prompt"]
        return [prompt] if isinstance(prompt, str) else list(prompt)
    template_kwargs = body.get("chat_template_kwargs")
    messages = _template_messages(body["messages"])
    if not _knows_developer_role(tokenizer.chat_template):
        messages = _developer_as_system(messages)
    text = tokenizer.apply_chat_template(
        messages,
        tools=body.get("tools"),
        add_generation_prompt=body.get("add_generation_prompt", True),
        continue_final_message=body.get("continue_final_message", False),
        tokenize=False,
        **(template_kwargs if isinstance(template_kwargs, dict) else {}),
    )
    return [text]


def count_tokens(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[int]:
    """Tokens of each text. The Rust tokenizer is called directly: it is safe to share between
    threads (the transformers wrapper resets its truncation state on every call), and its
    batch encoding releases the GIL (single `encode` holds it: an 8k-token prompt then stalled
    the event loop for ~30 ms even from another thread)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [len(encoding.ids) for encoding in encodings]
    return [len(tokenizer.encode(text, add_special_tokens=add_special_tokens)) for text in texts]


def _adds_special_tokens(body: dict[str, Any], kind: RequestKind) -> bool:
    # vLLM's defaults: a chat template writes its own special tokens; a completion gets BOS.
    return bool(body.get("add_special_tokens", kind == "completion"))


class TierTokenizer:
    """One tokenizer source's tokenizer, loaded once in a background thread; None after a
    failure (logged once), which leaves the tiers using it uncounted."""

    def __init__(self, source: TokenizerSource):
        self.source = source
        self._loaded: concurrent.futures.Future[Any] | None = None

    def preload(self) -> concurrent.futures.Future[Any]:
        if self._loaded is None:
            self._loaded = concurrent.futures.Future()
            # A daemon thread: a hub download that hangs must not hold up the replica's exit.
            threading.Thread(target=self._load, name="tokenizer-load", daemon=True).start()
        return self._loaded

    def _load(self) -> None:
        assert self._loaded is not None
        try:
            tokenizer = load_tokenizer(self.source)
        except Exception as e:  # whatever the failure: serve uncounted, as before, logged
            logger.warning(
                "No tokenizer from %s (%s: %s); prompt lengths of its tiers are left to the engine",
                self.source.name,
                type(e).__name__,
                e,
            )
            tokenizer = None
        self._loaded.set_result(tokenizer)

    async def count(self, body: dict[str, Any], kind: RequestKind, *, within: int) -> int | None:
        """Tokens of the request's longest prompt, or an upper bound on them when that bound
        is already at most `within` (then exact counting cannot change a decision); None when
        there is no tokenizer or the template cannot render the request."""
        loaded = self.preload()
        tokenizer = loaded.result() if loaded.done() else await asyncio.wrap_future(loaded)
        if tokenizer is None:
            return None
        try:
            texts = rendered_prompts(tokenizer, body, kind)  # ~30 us even for 50k characters
        except (TemplateError, ValueError, TypeError, KeyError) as e:
            # The engine renders the same template: it will refuse the request itself.
            logger.debug("Chat template failed on a request (%s); not counted", e)
            return None
        special = _adds_special_tokens(body, kind)
        bound = max(len(text.encode()) for text in texts) + _ADDED_TOKENS_SLACK
        if bound <= within:
            return bound
        # ~1.2 ms of encoding per 1k tokens (9 ms for 8k) on one core: off the event loop.
        counts = await asyncio.to_thread(count_tokens, tokenizer, texts, add_special_tokens=special)
        return max(counts)


def tier_for_length(
    prompt_tokens: Mapping[TierName, int | None],
    max_tokens: int | None,
    limits: Mapping[TierName, int | None],
    tiers: Sequence[TierName],
    *,
    kind: RequestKind = "chat",
) -> TierName | None:
    """The tier among `tiers` a request's length sends it to; None when every one holds it.

    A tier holds the request when prompt + max_tokens fits its context, or, without
    max_tokens, a single answer token does (vLLM's rule); an unknown limit holds anything, an
    uncounted prompt is taken as one token. Without max_tokens, a tier leaving the answer fewer
    than ANSWER_RESERVE_TOKENS is passed over for one that leaves more. Raises
    ContextLengthExceededError when no tier holds it.
    """

    def room(tier: TierName) -> int | None:
        limit = limits.get(tier)
        return None if limit is None else limit - (prompt_tokens.get(tier) or 1)

    def leaving(tokens: int) -> list[TierName]:
        return [t for t in tiers if (left := room(t)) is None or left >= tokens]

    holding = leaving(max_tokens or 1)
    if not holding:
        closest = max(tiers, key=lambda t: room(t) or 0)  # every room is known here
        raise _too_long(prompt_tokens, max_tokens, limits, closest, kind)
    if max_tokens is None:
        holding = leaving(ANSWER_RESERVE_TOKENS) or holding
    return None if len(holding) == len(tiers) else holding[0]


def _too_long(
    prompt_tokens: Mapping[TierName, int | None],
    max_tokens: int | None,
    limits: Mapping[TierName, int | None],
    tier: TierName,
    kind: RequestKind,
) -> ContextLengthExceededError:
    """OpenAI's refusal, for the tier that came closest to holding the request."""
    where = "messages" if kind == "chat" else "prompt"
    answer = max_tokens or 1
    counted = prompt_tokens.get(tier)
    if counted is None:
        requested = f"more than {answer} tokens ({answer} in the completion)"
    else:
        requested = (
            f"{counted + answer} tokens ({counted} in the {where}, {answer} in the completion)"
        )
    return ContextLengthExceededError(
        f"This model's maximum context length is {limits[tier]} tokens. However, you "
        f"requested {requested}. Please reduce the length of the {where} or completion.",
        param=where,
    )


@dataclass(frozen=True)
class ContextFit:
    """Where a request's length sends it: `tier`, or None when any tier the router picks
    holds it."""

    tier: TierName | None = None

    def steer(self, trace: RequestTrace) -> None:
        """Overrule a routed choice of a tier this request does not fit."""
        if self.tier is None or trace.pinned or trace.tier == self.tier:
            return
        trace.tier = trace.routed_to = self.tier
        trace.route_reason = "context"


class ContextLimits(Mapping[TierName | None, int | None]):
    """Each tier's context length (`max_model_len`; None: unknown), by pinned tier; under
    None (a routed request) the longest, which any part of a request must fit. `fit` measures a
    request against them with each tier's tokenizer."""

    def __init__(self, config: CascadeConfig):
        self._limits: dict[TierName, int | None] = {
            name: _max_model_len(config.tiers[name]) for name in TIER_NAMES
        }
        by_source: dict[TokenizerSource, TierTokenizer] = {}
        self.tokenizers: dict[TierName, TierTokenizer] = {}
        for name in TIER_NAMES:
            source = TokenizerSource.of_tier(config.tiers[name])
            self.tokenizers[name] = by_source.setdefault(source, TierTokenizer(source))

    def __getitem__(self, tier: TierName | None) -> int | None:
        if tier is not None:
            return self._limits[tier]
        known = list(self._limits.values())
        return None if None in known else max(known)  # type: ignore[type-var]

    def __iter__(self) -> Iterator[TierName | None]:
        return iter((*TIER_NAMES, None))

    def __len__(self) -> int:
        return len(TIER_NAMES) + 1

    def preload(self) -> None:
        """Start loading the tokenizers of tiers with a known context in the background."""
        for name in TIER_NAMES:
            if self._limits[name] is not None:
                self.tokenizers[name].preload()

    async def fit(
        self, body: dict[str, Any], kind: RequestKind, pinned: TierName | None
    ) -> ContextFit:
        """Where the request's length lets it go; ContextLengthExceededError if nowhere."""
        tiers = [pinned] if pinned is not None else list(TIER_NAMES)
        counted = [t for t in tiers if self._limits[t] is not None]
        if not counted:
            return ContextFit()
        max_tokens = requested_max_tokens(body, kind)
        answer = max_tokens or ANSWER_RESERVE_TOKENS
        # Tiers sharing a tokenizer share one count, exact unless all of them clearly hold it.
        sharing: dict[TierTokenizer, list[TierName]] = {}
        for tier in counted:
            sharing.setdefault(self.tokenizers[tier], []).append(tier)
        counting = [
            tokenizer.count(body, kind, within=min(self._limits[t] or 0 for t in names) - answer)
            for tokenizer, names in sharing.items()
        ]
        # One tokenizer (the same model on both tiers) is awaited without a task of its own.
        counts = [await counting[0]] if len(counting) == 1 else await asyncio.gather(*counting)
        prompt_tokens = {
            tier: count
            for names, count in zip(sharing.values(), counts, strict=True)
            for tier in names
        }
        tier = tier_for_length(prompt_tokens, max_tokens, self._limits, tiers, kind=kind)
        return ContextFit(tier)


def _max_model_len(tier: TierConfig) -> int | None:
    length = tier.engine_kwargs.get("max_model_len")
    return int(length) if length else None
