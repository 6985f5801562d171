"""Semantic cache on the real embedder and real Qdrant stores.

The embedder is the shipped one (`CacheConfig().embedding_model`: all-MiniLM-L6-v2 as an ONNX
int8 export, built on first use like `make models` does); the cosines quoted below are that
embedder's, with torch fp32's in brackets.

Each behaviour is checked on Qdrant Edge (the embedded default) and on qdrant-client's local
mode (the stand-in for a Qdrant server), through the same `SemanticCache` the app deploys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.models import prepare_source
from serve_app.cache import edge_store
from serve_app.cache.deployment import CacheLookup, SemanticCache
from serve_app.cache.edge_store import EdgeCacheStore
from serve_app.cache.embedder import Embedder, make_embedder
from serve_app.cache.keys import CacheKey, cache_key_for_request
from serve_app.cache.server_store import QdrantServerCacheStore
from serve_app.cache.store import CacheStore, CacheStoreError
from serve_app.cache.store_factory import make_cache_store
from serve_app.config import CacheConfig

DEFAULT_THRESHOLD = CacheConfig().similarity_threshold
TTL_S = 60.0
TENANT = "tenant-a"
MODEL = "cascade"
QUESTION = "What is the capital of France?"
PARAPHRASE = "what's France's capital city?"
ANSWER = "The capital of France is Paris."


class FakeClock:
    """Wall time the test controls, so expiry is tested without sleeping."""

    def __init__(self, now_s: float = 1_000_000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    prepare_source(CacheConfig().embedding_model)
    return make_embedder(CacheConfig().embedding_model, CacheConfig().embedding_threads)


@pytest.fixture(params=["edge", "qdrant-local"])
def store(request: pytest.FixtureRequest, embedder: Embedder) -> Iterator[Any]:
    opened: CacheStore
    if request.param == "edge":
        opened = EdgeCacheStore(None, embedder.dim)
    else:
        opened = QdrantServerCacheStore(":memory:", None, collection="test", dim=embedder.dim)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(store: CacheStore, embedder: Embedder, clock: FakeClock) -> SemanticCache:
    config = CacheConfig(ttl_s=TTL_S)
    return SemanticCache(config, embedder=embedder, store=store, clock=clock)


def chat(question: str, *, system: str | None = None, **params: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return {"model": MODEL, "messages": messages, "temperature": 0, **params}


def key_for(
    body: dict[str, Any], *, tenant: str = TENANT, model: str = MODEL, **kwargs: Any
) -> CacheKey:
    key = cache_key_for_request(
        body,
        kind=kwargs.pop("kind", "chat"),
        tenant=tenant,
        model=model,
        cache_nondeterministic=kwargs.pop("cache_nondeterministic", False),
        epoch=kwargs.pop("epoch", 0),
    )
    assert key is not None, body
    return key


def run(awaitable: Any) -> Any:
    return asyncio.run(awaitable)


def store_answer(
    cache: SemanticCache, key: CacheKey, *, text: str = ANSWER, finish_reason: str = "stop"
) -> bool:
    return run(
        cache.store(
            key,
            answer_text=text,
            finish_reason=finish_reason,
            prompt_tokens=12,
            completion_tokens=8,
            tier="small",
        )
    )


def lookup(cache: SemanticCache, key: CacheKey) -> CacheLookup:
    return run(cache.lookup(key))


# ---- hits ----------------------------------------------------------------------------


def test_identical_request_hits_exact(cache: SemanticCache) -> None:
    assert store_answer(cache, key_for(chat(QUESTION)))

    result = lookup(cache, key_for(chat(QUESTION)))

    assert result.kind == "exact"
    assert result.answer is not None
    assert (result.answer.answer_text, result.answer.tier) == (ANSWER, "small")
    assert (result.answer.prompt_tokens, result.answer.completion_tokens) == (12, 8)
    assert result.answer.similarity == 1.0


def test_paraphrase_hits_semantic_at_default_threshold(cache: SemanticCache) -> None:
    # Measured cosine of this pair: 0.926 [0.941] (default threshold 0.92).
    store_answer(cache, key_for(chat(QUESTION)))

    result = lookup(cache, key_for(chat(PARAPHRASE)))

    assert result.kind == "semantic"
    assert result.answer is not None
    assert result.answer.answer_text == ANSWER
    assert DEFAULT_THRESHOLD <= result.answer.similarity < 1.0


def test_looser_threshold_catches_a_more_distant_paraphrase(
    store: CacheStore, embedder: Embedder, clock: FakeClock
) -> None:
    # "switch on" vs "turn on": cosine 0.864 [0.865], below the default but above 0.85.
    cache = SemanticCache(
        CacheConfig(similarity_threshold=0.85), embedder=embedder, store=store, clock=clock
    )
    store_answer(cache, key_for(chat("turn on the lights")), text="Lights on.")

    assert lookup(cache, key_for(chat("switch on the lights"))).kind == "semantic"


def test_chat_text_parts_and_plain_string_are_one_request(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION)))
    parts = chat("")
    parts["messages"][-1]["content"] = [{"type": "text", "text": QUESTION}]

    assert lookup(cache, key_for(parts)).kind == "exact"


def test_completion_prompt_hits_exact(cache: SemanticCache) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 16}
    store_answer(cache, key_for(body, kind="completion"), text=" there was a cat.")

    listed = {**body, "prompt": ["Once upon a time"]}
    result = lookup(cache, key_for(listed, kind="completion"))

    assert result.kind == "exact"
    assert result.answer is not None and result.answer.answer_text == " there was a cat."


# ---- misses that must stay misses ----------------------------------------------------


def test_different_question_misses(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION)))

    assert lookup(cache, key_for(chat("What is the capital of Germany?"))).kind == "miss"
    assert lookup(cache, key_for(chat("How do I bake sourdough bread?"))).kind == "miss"


def test_negation_does_not_hit_at_default_threshold(cache: SemanticCache) -> None:
    # Measured cosine of on/off: 0.851 [0.869], under the default 0.92.
    store_answer(cache, key_for(chat("turn on the lights")), text="Lights on.")

    assert lookup(cache, key_for(chat("turn off the lights"))).kind == "miss"


def test_swapped_conversion_direction_does_not_hit(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat("How do I convert Celsius to Fahrenheit?")))

    assert lookup(cache, key_for(chat("How do I convert Fahrenheit to Celsius?"))).kind == "miss"


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        (
            "Is it safe to take ibuprofen with alcohol?",
            "Is it unsafe to take ibuprofen with alcohol?",
        ),
        ("What is 15% of 80?", "What is 15% of 90?"),
        ("Who founded Microsoft?", "Who founded Apple?"),
    ],
    ids=["polarity-prefix", "different-number", "different-entity"],
)
def test_near_misses_above_threshold_do_not_hit(
    cache: SemanticCache, stored: str, asked: str
) -> None:
    store_answer(cache, key_for(chat(stored)))

    assert lookup(cache, key_for(chat(asked))).kind == "miss"


def test_other_tenant_never_hits(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION), tenant="tenant-a"))

    assert lookup(cache, key_for(chat(QUESTION), tenant="tenant-b")).kind == "miss"
    assert lookup(cache, key_for(chat(PARAPHRASE), tenant="tenant-b")).kind == "miss"


def test_other_system_prompt_never_hits(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION, system="Answer in French.")))

    assert lookup(cache, key_for(chat(QUESTION, system="Answer in German."))).kind == "miss"
    assert lookup(cache, key_for(chat(QUESTION))).kind == "miss"


def test_other_earlier_turns_never_hit(cache: SemanticCache) -> None:
    body = chat("And its population?")
    body["messages"][:0] = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": ANSWER},
    ]
    store_answer(cache, key_for(body), text="About 2.1 million.")

    assert lookup(cache, key_for(chat("And its population?"))).kind == "miss"
    assert lookup(cache, key_for(body)).kind == "exact"


@pytest.mark.parametrize(
    "params",
    [{"temperature": 0.0, "max_tokens": 64}, {"max_tokens": 32}, {"stop": ["\n"]}, {"seed": 7}],
)
def test_other_sampling_params_never_hit(cache: SemanticCache, params: dict[str, Any]) -> None:
    store_answer(cache, key_for(chat(QUESTION, max_tokens=16)))

    assert lookup(cache, key_for(chat(QUESTION, **params))).kind == "miss"


def test_other_temperature_never_hits_when_nondeterministic_is_cached(
    cache: SemanticCache,
) -> None:
    warm = key_for(chat(QUESTION, temperature=0.7), cache_nondeterministic=True)
    store_answer(cache, warm)

    cold = key_for(chat(QUESTION, temperature=0.2), cache_nondeterministic=True)
    assert lookup(cache, cold).kind == "miss"
    assert lookup(cache, key_for(chat(QUESTION))).kind == "miss"


def test_streaming_and_default_spelled_out_share_the_entry(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION)))

    same = chat(QUESTION, stream=True, top_p=1.0, n=1, user="someone")
    assert lookup(cache, key_for(same)).kind == "exact"


def test_expired_entries_are_never_served(cache: SemanticCache, clock: FakeClock) -> None:
    store_answer(cache, key_for(chat(QUESTION)))
    clock.now_s += TTL_S - 1
    assert lookup(cache, key_for(chat(QUESTION))).kind == "exact"

    clock.now_s += 2

    assert lookup(cache, key_for(chat(QUESTION))).kind == "miss"
    assert lookup(cache, key_for(chat(PARAPHRASE))).kind == "miss"
    assert run(cache.purge_expired()) == 1
    assert run(cache.stats())["entries"] == 0


def test_client_ttl_shortens_but_never_extends(cache: SemanticCache, clock: FakeClock) -> None:
    short, long = key_for(chat(QUESTION)), key_for(chat("How tall is Mount Everest?"))
    run(
        cache.store(
            short,
            answer_text=ANSWER,
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
            tier="small",
            ttl_s=10,
        )
    )
    run(
        cache.store(
            long,
            answer_text=ANSWER,
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
            tier="small",
            ttl_s=TTL_S * 10,
        )
    )
    clock.now_s += 11
    assert lookup(cache, short).kind == "miss"
    assert lookup(cache, long).kind == "exact"
    clock.now_s += TTL_S
    assert lookup(cache, long).kind == "miss"


def test_invalidate_one_tenant_keeps_the_others(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION), tenant="tenant-a"))
    store_answer(cache, key_for(chat(QUESTION), tenant="tenant-b"))

    assert run(cache.invalidate(tenant="tenant-a")) == 1

    assert lookup(cache, key_for(chat(QUESTION), tenant="tenant-a")).kind == "miss"
    assert lookup(cache, key_for(chat(QUESTION), tenant="tenant-b")).kind == "exact"


def test_invalidate_one_model_then_everything(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION), model="cascade"))
    store_answer(cache, key_for(chat(QUESTION), model="cascade-large"))

    assert run(cache.invalidate(model="cascade-large")) == 1
    assert lookup(cache, key_for(chat(QUESTION), model="cascade-large")).kind == "miss"
    assert lookup(cache, key_for(chat(QUESTION), model="cascade")).kind == "exact"

    assert run(cache.invalidate()) == 1
    assert lookup(cache, key_for(chat(QUESTION), model="cascade")).kind == "miss"


def test_epoch_bump_makes_every_old_entry_unreachable(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION), epoch=0))

    assert lookup(cache, key_for(chat(QUESTION), epoch=1)).kind == "miss"
    assert lookup(cache, key_for(chat(PARAPHRASE), epoch=1)).kind == "miss"


def test_storing_again_overwrites_and_renews(cache: SemanticCache, clock: FakeClock) -> None:
    store_answer(cache, key_for(chat(QUESTION)), text="old")
    clock.now_s += TTL_S / 2
    store_answer(cache, key_for(chat(QUESTION)), text="new")
    clock.now_s += TTL_S * 0.75

    result = lookup(cache, key_for(chat(QUESTION)))

    assert result.answer is not None and result.answer.answer_text == "new"
    assert run(cache.stats())["entries"] == 1


# ---- what is not cached --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        chat(QUESTION, n=2),
        chat(QUESTION, tools=[{"type": "function", "function": {"name": "f"}}]),
        chat(QUESTION, temperature=0.7),
        {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]},  # default T=1
        chat(QUESTION, cache=False),
        chat(QUESTION, logprobs=True),
        {
            "model": MODEL,
            "temperature": 0,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ],
        },
    ],
    ids=["n2", "tools", "temperature", "default-temperature", "opt-out", "logprobs", "image"],
)
def test_uncacheable_chat_requests_have_no_key(body: dict[str, Any]) -> None:
    key = cache_key_for_request(
        body, kind="chat", tenant=TENANT, model=MODEL, cache_nondeterministic=False
    )
    assert key is None


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "prompt": ["one", "two"], "temperature": 0},
        {"model": MODEL, "prompt": "Once", "temperature": 0, "logprobs": 0},
    ],
    ids=["batch-prompt", "logprobs"],
)
def test_uncacheable_completion_requests_have_no_key(body: dict[str, Any]) -> None:
    key = cache_key_for_request(
        body, kind="completion", tenant=TENANT, model=MODEL, cache_nondeterministic=False
    )
    assert key is None


def test_nondeterministic_requests_are_cached_when_configured() -> None:
    body = chat(QUESTION, temperature=0.7)
    key = cache_key_for_request(
        body, kind="chat", tenant=TENANT, model=MODEL, cache_nondeterministic=True
    )
    assert key is not None


@pytest.mark.parametrize("finish_reason", ["content_filter", "tool_calls", None])
def test_incomplete_answers_are_not_stored(cache: SemanticCache, finish_reason: str | None) -> None:
    key = key_for(chat(QUESTION))

    assert not run(
        cache.store(
            key,
            answer_text="The capital of",
            finish_reason=finish_reason,
            prompt_tokens=12,
            completion_tokens=3,
            tier="small",
        )
    )
    assert lookup(cache, key).kind == "miss"


def test_an_answer_cut_at_the_clients_max_tokens_is_replayed_as_cut(cache: SemanticCache) -> None:
    # The ingress stores a `length` answer only when the client's own max_tokens cut it
    # (quality/cache_policy.py); max_tokens is part of the partition.
    key = key_for(chat(QUESTION, max_tokens=8))

    assert store_answer(cache, key, text="The capital of France is", finish_reason="length")
    result = lookup(cache, key)

    assert result.kind == "exact"
    assert result.answer.finish_reason == "length"
    assert lookup(cache, key_for(chat(QUESTION, max_tokens=9))).kind == "miss"


def test_empty_answers_are_not_stored(cache: SemanticCache) -> None:
    key = key_for(chat(QUESTION))

    assert not store_answer(cache, key, text="  \n")
    assert lookup(cache, key).kind == "miss"


# ---- failing open --------------------------------------------------------------------


def test_closed_store_fails_open(cache: SemanticCache, store: CacheStore) -> None:
    store_answer(cache, key_for(chat(QUESTION)))
    store.close()

    result = lookup(cache, key_for(chat(QUESTION)))

    assert (result.kind, result.answer) == ("error", None)
    assert not store_answer(cache, key_for(chat(PARAPHRASE)))
    stats = run(cache.stats())
    assert stats["entries"] is None
    assert stats["lookups_by_kind"]["error"] == 1
    with pytest.raises(CacheStoreError, match="closed"):
        cache.check_health()


def test_disabled_cache_loads_nothing_and_stores_nothing() -> None:
    cache = SemanticCache({"enabled": False})
    key = key_for(chat(QUESTION))

    assert not store_answer(cache, key)
    assert lookup(cache, key).kind == "disabled"


def test_stats_count_lookups_by_kind(cache: SemanticCache) -> None:
    store_answer(cache, key_for(chat(QUESTION)))
    for question in (QUESTION, PARAPHRASE, "How do I bake sourdough bread?"):
        lookup(cache, key_for(chat(question)))

    stats = run(cache.stats())

    assert stats["entries"] == 1
    assert stats["lookups"] == 3 and stats["hits"] == 2
    assert stats["lookups_by_kind"] == {
        "exact": 1,
        "semantic": 1,
        "miss": 1,
        "disabled": 0,
        "error": 0,
    }


# ---- the stores themselves -----------------------------------------------------------


def _found_after_restart(config: CacheConfig, embedder: Embedder) -> str:
    """Store an answer, close the cache, reopen it: how the paraphrase is found then."""
    first = SemanticCache(config, embedder=embedder)
    store_answer(first, key_for(chat(QUESTION)))
    first.close()

    second = SemanticCache(config, embedder=embedder)
    try:
        return lookup(second, key_for(chat(PARAPHRASE))).kind
    finally:
        second.close()


def test_edge_shard_keeps_answers_across_restart(tmp_path: Path, embedder: Embedder) -> None:
    config = CacheConfig(store="edge", edge_path=str(tmp_path / "shard"))
    assert _found_after_restart(config, embedder) == "semantic"


def test_default_edge_shard_keeps_answers_across_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder: Embedder
) -> None:
    # An operator who leaves `edge_path` out restarts the cache and still has its answers.
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _found_after_restart(CacheConfig(store="edge"), embedder) == "semantic"
    assert any(tmp_path.rglob("*")), "the shard lives under the operator's home"


def test_a_new_replica_waits_for_the_old_one_to_release_the_shard(
    tmp_path: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling update can start the new replica while the old one still drains: the new one
    opens the shard once the old one lets go, with the old one's answers, instead of failing."""
    caplog.set_level(logging.INFO, logger=edge_store.__name__)
    old = EdgeCacheStore(str(tmp_path), embedder.dim)
    cache = SemanticCache(CacheConfig(), embedder=embedder, store=old)
    store_answer(cache, key_for(chat(QUESTION)))
    opened: list[EdgeCacheStore] = []
    replacement = threading.Thread(
        target=lambda: opened.append(EdgeCacheStore(str(tmp_path), embedder.dim))
    )
    replacement.start()
    # Until the new one has found the shard held (or given up).
    while replacement.is_alive() and "is held" not in caplog.text:
        time.sleep(0.01)
    old.close()  # the old replica stops
    replacement.join()
    (new,) = opened
    try:
        found = SemanticCache(CacheConfig(), embedder=embedder, store=new)
        assert lookup(found, key_for(chat(QUESTION))).kind == "exact"
    finally:
        new.close()


def test_a_shard_held_past_the_wait_fails_with_the_lock_error(
    tmp_path: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge_store, "SHARD_RELEASE_WAIT_S", 0.0)
    holder = EdgeCacheStore(str(tmp_path), embedder.dim)
    try:
        with pytest.raises(CacheStoreError, match="WouldBlock"):
            EdgeCacheStore(str(tmp_path), embedder.dim)
    finally:
        holder.close()


def test_edge_temp_shard_is_removed_on_close(embedder: Embedder) -> None:
    store = EdgeCacheStore(None, embedder.dim)
    path = Path(store._path)
    assert path.exists()

    store.close()

    assert not path.exists()


def test_make_cache_store_builds_local_qdrant_and_checks_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_cache_store(CacheConfig(store="qdrant", qdrant_url=":memory:"), dim=8)
    try:
        assert store.count() == 0
    finally:
        store.close()
    monkeypatch.delenv("CASCADE_TEST_QDRANT_KEY", raising=False)
    missing_key = CacheConfig(
        store="qdrant",
        qdrant_url="http://localhost:1",
        qdrant_api_key_env="CASCADE_TEST_QDRANT_KEY",
    )
    with pytest.raises(ValueError, match="CASCADE_TEST_QDRANT_KEY"):
        make_cache_store(missing_key, dim=8)


def test_expired_closer_entry_neither_served_nor_hides_a_live_one(
    store: CacheStore, embedder: Embedder
) -> None:
    from benchmarks.cache_latency import synthetic_entry

    question = embedder.embed(QUESTION)
    live = synthetic_entry(1, 0)
    expired = dataclasses.replace(synthetic_entry(2, 0), expires_at_s=live.created_at_s - 1)
    store.upsert(embedder.embed(PARAPHRASE), live)
    store.upsert(question, expired)  # identical vector: the closest candidate

    found = store.search(question, partition=live.partition, threshold=0.5, now_s=live.created_at_s)

    assert found is not None and found.exact_key == live.exact_key
