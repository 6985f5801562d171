"""The ingress's side of a cache that runs in the ingress replica (`cache.placement: ingress`,
the shipped placement): the same client the pipeline uses, over the real embedder and a real
Qdrant Edge shard, with no deployment in between."""

from __future__ import annotations

import asyncio
from typing import Any

from devtools.models import prepare_source
from serve_app.accounting.metrics import IngressMetrics
from serve_app.cache.client import CacheClient
from serve_app.cache.deployment import SemanticCache
from serve_app.config import CacheConfig
from serve_app.protocol.responses import Answer

QUESTION = "What is the capital of France?"
PARAPHRASE = "what's France's capital city?"


def _body(question: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    return {"model": "cascade", "messages": messages, "temperature": 0}  # deterministic: cached


def test_a_cache_in_the_ingress_stores_finds_and_forgets_answers() -> None:
    config = CacheConfig(edge_path=None)
    prepare_source(config.embedding_model)
    client = CacheClient(SemanticCache(config, inline=True), config, IngressMetrics.create())

    def ticket(question: str) -> Any:
        return client.ticket(_body(question), "chat", tenant="tenant-a", headers={})

    async def scenario() -> list[Any]:
        first = await client.lookup(ticket(QUESTION))
        answer = Answer("Paris.", "stop", prompt_tokens=9, completion_tokens=2, model="cascade")
        client.store(ticket(QUESTION), answer, "small")  # fire and forget, as the pipeline does
        # The store runs as a task of this event loop: wait until it has landed.
        while (await client.lookup(ticket(QUESTION))).kind != "exact":
            await asyncio.sleep(0.01)
        paraphrased = await client.lookup(ticket(PARAPHRASE))
        deleted = await client.invalidate(tenant="tenant-a", model=None)
        after = await client.lookup(ticket(QUESTION))
        return [first, paraphrased, deleted, after]

    first, paraphrased, deleted, after = asyncio.run(scenario())
    assert first.kind == "miss"
    assert paraphrased.kind == "semantic" and paraphrased.answer.answer_text == "Paris."
    assert deleted == 1
    assert after.kind == "miss"
