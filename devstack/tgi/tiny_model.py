"""Build the tiny offline causal LM of the devstack: real generation, meaningless words, no download.

The tokenizer is a byte-level BPE trained on Python's reference documentation (``pydoc_data.topics``, shipped
with every Python); the model is a 2-layer Llama with fixed random weights (``torch.manual_seed(0)``). Both
are saved with ``save_pretrained`` in one folder, built once and reused.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: ``/info`` model_id of the tiny model.
TINY_MODEL_ID = "ragstream/tiny-random-lm (offline, meaningless output)"
#: Bumped when the recipe changes, so old builds are not reused.
RECIPE_VERSION = "2"
VOCAB_SIZE = 6000
MAX_POSITIONS = 4096
EOS_TOKEN = "<|endoftext|>"
CHAT_END_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|im_start|>", CHAT_END_TOKEN, "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def is_built(folder: Path) -> bool:
    """True when ``folder`` holds a complete tiny model of the current recipe."""
    marker = folder / "RAGSTREAM_TINY_LM"
    return marker.exists() and marker.read_text().strip() == RECIPE_VERSION


def build_tiny_model(folder: Path) -> Path:
    """Build the tiny model into ``folder`` unless it is already there (safe across processes).

    Args:
        folder: Target folder; created with its parents.

    Returns:
        ``folder``.

    Raises:
        OSError: the folder cannot be written.
    """
    if is_built(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(folder):
            return folder
        t0 = time.monotonic()
        tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _build(tmp)
        (tmp / "RAGSTREAM_TINY_LM").write_text(RECIPE_VERSION)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)
        logger.info("built tiny LM folder=%s seconds=%.1f", folder, time.monotonic() - t0)
    return folder


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def _build(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token="<|pad|>",
        model_max_length=MAX_POSITIONS,
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.save_pretrained(folder)

    eos_ids = [int(hf_tok.convert_tokens_to_ids(t)) for t in (EOS_TOKEN, CHAT_END_TOKEN)]  # type: ignore[arg-type]
    config = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        # Larger than the usual 0.02 so greedy decoding wanders through the vocabulary instead of repeating.
        initializer_range=0.2,
        bos_token_id=eos_ids[0],
        eos_token_id=eos_ids,
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
