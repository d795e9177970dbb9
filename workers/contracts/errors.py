"""One exception root for ragstream, with subclasses callers can act on.

Upstream errors are translated inside the adapter that sees them (``embedding.py``, ``store.py``, ``llm.py``)
into :class:`RetryableError` (try again later: overload, loading, timeout, broker or database briefly
away) or :class:`PermanentError` (retrying cannot help: bad input, validation, misconfiguration).
"""

from __future__ import annotations


class RagError(Exception):
    """Root of every error raised on purpose by ragstream."""

    #: Short machine-readable class written into dead letters and error responses.
    error_class: str = "rag_error"


class RetryableError(RagError):
    """A transient failure: the same call may succeed later (bounded retries with backoff)."""

    error_class = "retryable"


class PermanentError(RagError):
    """A failure that retrying cannot fix; the input is answered with an error and dead-lettered."""

    error_class = "permanent"


class ConfigError(PermanentError):
    """Settings or environment are wrong (bad URL, unreachable service at start-up, dimension mismatch)."""

    error_class = "config"


class ServiceUnavailableError(ConfigError):
    """A required service (Kafka broker, PostgreSQL, LLM server) cannot be reached at start-up."""

    error_class = "service_unavailable"


class DimensionMismatchError(ConfigError):
    """The vector table's column dimension differs from the embedding model's output dimension."""

    error_class = "dimension_mismatch"


class MessageError(PermanentError):
    """A Kafka message could not be decoded or validated against its wire model."""

    error_class = "bad_message"


class PromptTooLargeError(PermanentError):
    """The prompt does not fit the LLM server's token limits or the producer's message size."""

    error_class = "prompt_too_large"


class GenerationError(RagError):
    """The LLM server failed to generate an answer (base of the generator's typed errors)."""

    error_class = "generation"


class LLMRetryableError(GenerationError, RetryableError):
    """A generation failure worth retrying later."""

    error_class = "llm_retryable"


class LLMOverloadedError(LLMRetryableError):
    """HTTP 429 / TGI ``overloaded``: the server has too many requests in flight."""

    error_class = "overloaded"


class LLMLoadingError(LLMRetryableError):
    """HTTP 503: the model is still loading (or the server is briefly unavailable)."""

    error_class = "model_loading"


class LLMTimeoutError(LLMRetryableError):
    """No complete answer within ``RAG_LLM__TIMEOUT_S`` seconds, or the connection failed."""

    error_class = "llm_timeout"


class LLMValidationError(GenerationError, PermanentError):
    """HTTP 422/400 / TGI ``validation``: the input is too long or a parameter is invalid."""

    error_class = "llm_validation"


class LLMStreamError(GenerationError, PermanentError):
    """The server sent an error event inside a 200 stream; the partial text is discarded."""

    error_class = "llm_stream_error"


class RequestCancelledError(PermanentError):
    """The client gave up on the request (a cancel on the control topic); its answer is ``cancelled``."""

    error_class = "cancelled"


class RequestValidationError(PermanentError):
    """A request a client builds breaks the Request contract: a field outside its limits (``RagClient.ask``).

    Attributes:
        field: the first offending field (dotted path, e.g. ``query`` or ``generation.max_new_tokens``).
        limit: the limit it broke (e.g. 20000 for the query's ``max_length``), ``None`` when it has none.
    """

    error_class = "invalid_request"

    def __init__(self, message: str, *, field: str = "", limit: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit


class UnknownFilterFieldError(RequestValidationError):
    """A request filters on a field the chunk index does not have (answered ``rejected``, naming the known ones)."""

    error_class = "unknown_filter_field"


class RequestDeliveryError(RetryableError):
    """A client's request could not be delivered to the requests topic (broker away past the timeout)."""

    error_class = "request_not_delivered"


class RequestTimeoutError(RagError):
    """A client waited longer than its timeout for the Response to a request id."""

    error_class = "timeout"
