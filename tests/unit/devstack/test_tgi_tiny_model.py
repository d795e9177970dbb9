"""The tiny offline model: built once, deterministic, reused."""

from __future__ import annotations

from pathlib import Path

from devstack.stack import TINY_LM_DIR
from devstack.tgi.tiny_model import CHAT_END_TOKEN, build_tiny_model, is_built


def test_build_is_cached_and_loadable() -> None:
    folder = build_tiny_model(Path(TINY_LM_DIR))
    assert is_built(folder)
    assert build_tiny_model(folder) == folder  # second call reuses
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert 4000 <= len(tok) <= 8000
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert CHAT_END_TOKEN in prompt and prompt.endswith("assistant\n")
