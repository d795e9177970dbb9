"""Helpers of the tests that run LLM servers we did not write (llama.cpp's)."""

from __future__ import annotations

import os

import pytest

from devstack import llamacpp


def require_llama_cpp() -> None:
    """Skip the calling test when llama-cpp-python or its model is not installed here; under CI (``CI=true``),
    where ``.ci/run`` builds it, fail instead."""
    reason = llamacpp.missing()
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(reason)
        pytest.skip(reason)
