"""Token counting with a tokenizer (local files or the LLM server's ``/tokenize``) and the server's limits.

Two uses share this module:

* prompt building counts tokens of the **LLM's** tokenizer (:class:`LLMTokenCounter`): either a local
  tokenizer (:class:`LocalTokenizerCounter`) or the TGI server's ``POST /tokenize``
  (:class:`ServerTokenizeCounter`);
* ingestion counts and splits by tokens of the **embedding model's** tokenizer; the embedder hands out a
  :class:`LocalTokenizerCounter` built from its own ``tokenizer.json`` (see ``embedding.py``).

:func:`fetch_server_limits` reads TGI's ``GET /info`` (``max_input_tokens``, ``max_total_tokens``).

Nothing here imports torch, sentence-transformers or Kafka; nothing connects at import time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx

from workers.errors import ConfigError, PermanentError, RetryableError, ServiceUnavailableError

logger = logging.getLogger(__name__)


@runtime_checkable
class LLMTokenCounter(Protocol):
    """Counts tokens of texts as one tokenizer sees them."""

    def count(self, texts: list[str]) -> list[int]:
        """Return the number of tokens of each text (special tokens the tokenizer adds included)."""
        ...


class LocalTokenizerCounter:
    """A HF ``tokenizers`` tokenizer loaded from local files only; thread-safe.

    This object owns its tokenizer (never shared with a model), so counting never races with a model's
    own tokenizer (the HF tokenizers "Already borrowed" error). Calls are serialized by a lock.

    Args:
        path_or_id: a ``tokenizer.json`` file, a folder holding one, or a local model folder / hub id
            already in the local cache (loaded with ``transformers.AutoTokenizer``, ``local_files_only``).
        add_special_tokens: count the special tokens the tokenizer adds (e.g. ``[CLS]``/``[SEP]``, BOS).

    Raises:
        ConfigError: no tokenizer can be loaded from ``path_or_id`` without a download.
    """

    def __init__(self, path_or_id: str | Path, *, add_special_tokens: bool = True) -> None:
        self._tokenizer = _load_tokenizer(path_or_id)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._add_special = add_special_tokens
        self._lock = threading.Lock()
        self.source = str(path_or_id)
        self._num_special = len(self._encode_batch([""])[0].ids) if add_special_tokens else 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, add_special_tokens: bool = True) -> LocalTokenizerCounter:
        """Build a counter from a private COPY of an in-memory ``tokenizers.Tokenizer``.

        Args:
            tokenizer: a ``tokenizers.Tokenizer`` (e.g. a transformers fast tokenizer's ``backend_tokenizer``).
            add_special_tokens: as in the constructor.
        """
        from tokenizers import Tokenizer

        self = cls.__new__(cls)
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._add_special = add_special_tokens
        self._lock = threading.Lock()
        self.source = "<in-memory tokenizer>"
        self._num_special = len(self._encode_batch([""])[0].ids) if add_special_tokens else 0
        return self

    @property
    def num_special_tokens(self) -> int:
        """Tokens the tokenizer adds to every text (2 for BERT's ``[CLS]``…``[SEP]``; 0 if not counted)."""
        return self._num_special

    def _encode_batch(self, texts: list[str]) -> list[Any]:
        with self._lock:
            return list(self._tokenizer.encode_batch(texts, add_special_tokens=self._add_special))

    def count(self, texts: list[str]) -> list[int]:
        """Return the token count of each text, special tokens included when configured.

        Args:
            texts: n strings.

        Returns:
            n token counts.
        """
        if not texts:
            return []
        return [len(e.ids) for e in self._encode_batch(list(texts))]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of the tokens of ``text``, special tokens excluded.

        Continuation pieces of one word (``##ing``) get their own span inside the word.
        """
        with self._lock:
            enc = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(s), int(e)) for s, e in enc.offsets]


class CachedTokenCounter:
    """An LRU cache of token counts in front of another counter (thread-safe).

    Prompt building counts every rendered passage of every prompt; popular chunks come back again and again,
    and counting a 250-token passage with a BPE tokenizer costs about 0.5 ms of CPU. Texts are keyed by a
    16-byte BLAKE2b digest, so the cache holds ``max_entries`` × ~100 bytes whatever the texts' length. The
    misses of one call are counted in one call of the inner counter.

    Args:
        inner: the counter that does the counting.
        max_entries: counts kept (least recently used dropped first); 0 disables the cache.
    """

    def __init__(self, inner: LLMTokenCounter, max_entries: int = 65_536) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def count(self, texts: list[str]) -> list[int]:
        """Return the token count of each text (as the inner counter would).

        Raises:
            whatever the inner counter raises for the texts not in the cache.
        """
        if self.max_entries <= 0:
            return self.inner.count(texts)
        keys = [hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest() for t in texts]
        out: list[int | None] = []
        with self._lock:
            for k in keys:
                hit = self._cache.get(k)
                if hit is not None:
                    self._cache.move_to_end(k)
                out.append(hit)
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            first: dict[bytes, int] = {}  # each distinct missing text counted once
            for i in missing:
                first.setdefault(keys[i], i)
            counted = dict(zip(first, self.inner.count([texts[i] for i in first.values()]), strict=True))
            with self._lock:
                for k, n in counted.items():
                    self._cache[k] = n
                    self._cache.move_to_end(k)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
                self.misses += len(counted)
            for i in missing:
                out[i] = counted[keys[i]]
        with self._lock:
            self.hits += len(texts) - len(missing)
        return [int(v) for v in out if v is not None]

    def __len__(self) -> int:
        return len(self._cache)


def _load_tokenizer(path_or_id: str | Path) -> Any:
    from tokenizers import Tokenizer

    path = Path(path_or_id).expanduser()
    candidates = [path] if path.is_file() else [path / "tokenizer.json"]
    for cand in candidates:
        if cand.is_file():
            try:
                return Tokenizer.from_file(str(cand))
            except Exception as exc:  # tokenizers raises a bare Exception on a bad file
                raise ConfigError(f"cannot read tokenizer file {cand}: {exc}") from exc
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path_or_id), local_files_only=True)
    except Exception as exc:  # OSError, ValueError, ImportError: all mean "not available locally"
        raise ConfigError(
            f"no tokenizer found at {path_or_id!r} (local files only): {str(exc).splitlines()[0]}"
        ) from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"tokenizer at {path_or_id!r} is not a fast (tokenizers) tokenizer")
    return Tokenizer.from_str(backend.to_str())


class ServerTokenizeCounter:
    """Counts tokens with the LLM server's TGI ``POST /tokenize`` (one request per text).

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8080``.
        client: an ``httpx.Client`` to use (tests pass one with a ``MockTransport``); when ``None`` one is
            created and owned (close it with :meth:`close`).
        timeout_s: per-request timeout (seconds) of an owned client.

    Raises (from :meth:`count`):
        RetryableError: the server cannot be reached, times out, or answers 429/5xx.
        PermanentError: the server answers another 4xx or a body that is not a JSON list.
    """

    def __init__(self, base_url: str, *, client: httpx.Client | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)

    def count(self, texts: list[str]) -> list[int]:
        """Return the number of tokens the server's tokenizer makes of each text."""
        out: list[int] = []
        for text in texts:
            data = _request_json(self._client, "POST", f"{self.base_url}/tokenize", json={"inputs": text})
            if not isinstance(data, list):
                raise PermanentError(f"/tokenize returned {type(data).__name__}, expected a JSON list of tokens")
            out.append(len(data))
        return out

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns:
            self._client.close()

    def __enter__(self) -> ServerTokenizeCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _request_json(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        resp = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{method} {url} timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise RetryableError(f"{method} {url} failed: {exc}") from exc
    if resp.status_code == 429 or resp.status_code >= 500:
        raise RetryableError(f"{method} {url} answered {resp.status_code}: {resp.text[:200]}")
    if resp.status_code >= 400:
        raise PermanentError(f"{method} {url} answered {resp.status_code}: {resp.text[:200]}")
    try:
        return resp.json()
    except ValueError as exc:
        raise PermanentError(f"{method} {url} returned a body that is not JSON: {resp.text[:200]!r}") from exc


@dataclass(frozen=True)
class ServerLimits:
    """Token limits of the LLM server (TGI ``/info``).

    Attributes:
        max_input_tokens: most prompt tokens the server accepts (``None`` if it does not say).
        max_total_tokens: most prompt + generated tokens of one request (``None`` if it does not say).
        model_id: the served model's id, if given.
    """

    max_input_tokens: int | None
    max_total_tokens: int | None
    model_id: str | None = None


def parse_server_info(info: dict[str, Any]) -> ServerLimits:
    """Read the limits from a TGI ``/info`` JSON body.

    Current TGI names them ``max_input_tokens`` and ``max_total_tokens``; older versions use
    ``max_input_length``. Missing or non-integer values become ``None``.
    """

    def _int(*keys: str) -> int | None:
        for key in keys:
            val = info.get(key)
            if isinstance(val, int) and not isinstance(val, bool) and val > 0:
                return val
        return None

    model = info.get("model_id")
    return ServerLimits(
        max_input_tokens=_int("max_input_tokens", "max_input_length"),
        max_total_tokens=_int("max_total_tokens"),
        model_id=model if isinstance(model, str) else None,
    )


def fetch_server_limits(base_url: str, *, client: httpx.Client | None = None, timeout_s: float = 10.0) -> ServerLimits:
    """Ask a TGI-compatible server for its token limits (``GET /info``).

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8080``.
        client: an ``httpx.Client`` to use; a short-lived one is created when ``None``.
        timeout_s: request timeout (seconds) of a created client.

    Returns:
        The server's limits; fields the server does not report are ``None``.

    Raises:
        ServiceUnavailableError: the server cannot be reached or answers with an error.
    """
    url = f"{base_url.rstrip('/')}/info"
    own = client is None
    http = client if client is not None else httpx.Client(timeout=timeout_s)
    try:
        data = _request_json(http, "GET", url)
    except (RetryableError, PermanentError) as exc:
        raise ServiceUnavailableError(f"cannot read the LLM server's limits: {exc}") from exc
    finally:
        if own:
            http.close()
    if not isinstance(data, dict):
        raise ServiceUnavailableError(f"GET {url} returned {type(data).__name__}, expected a JSON object")
    limits = parse_server_info(data)
    logger.info(
        "llm server limits url=%s model=%s max_input_tokens=%s max_total_tokens=%s",
        base_url,
        limits.model_id,
        limits.max_input_tokens,
        limits.max_total_tokens,
    )
    return limits
