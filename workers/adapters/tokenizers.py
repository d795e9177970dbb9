"""Token counting with a local tokenizer (HF ``tokenizers``), and an LRU cache in front of any counter.

Two uses share this module:

* prompt building counts tokens of the **LLM's** tokenizer (:class:`LLMTokenCounter`): either a local
  tokenizer (:class:`LocalTokenizerCounter`) or the LLM server's ``POST /tokenize``
  (:meth:`workers.adapters.llm_server.LLMServerClient.count`), usually behind a :class:`CachedTokenCounter`;
* ingestion counts and splits by tokens of the **embedding model's** tokenizer; the embedder hands out a
  :class:`LocalTokenizerCounter` built from its own ``tokenizer.json`` (see ``embedding.py``).

Nothing here imports torch, sentence-transformers or Kafka; nothing connects at import time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from workers.adapters.interfaces import LLMTokenCounter
from workers.contracts.errors import ConfigError

logger = logging.getLogger(__name__)


class LocalTokenizerCounter:
    """A HF ``tokenizers`` tokenizer loaded from local files only; thread-safe.

    This object owns its tokenizer (never shared with a model), so counting never races with a model's
    own tokenizer (the HF tokenizers "Already borrowed" error). Calls are serialized by a lock.

    Args:
        path_or_id: a ``tokenizer.json`` file, a folder holding one, a GGUF model file (llama.cpp's format; needs
            the ``gguf`` package), or a local model folder / hub id already in the local cache (loaded with
            ``transformers.AutoTokenizer``, ``local_files_only``).
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
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_gguf_tokenizer(path)
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


def _load_gguf_tokenizer(path: Path) -> Any:
    """The tokenizer stored in a GGUF model file (llama.cpp's format), via transformers and the ``gguf`` package."""
    from tokenizers import Tokenizer

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except Exception as exc:  # ImportError (no gguf package), ValueError (architecture unknown), OSError
        raise ConfigError(f"cannot read the tokenizer of GGUF file {path}: {str(exc).splitlines()[0]}") from exc
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"the tokenizer of GGUF file {path} is not a fast (tokenizers) tokenizer")
    return Tokenizer.from_str(backend.to_str())
