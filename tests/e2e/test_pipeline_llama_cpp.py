"""End to end on a server we did not write: the 20 public questions through the pipeline (retriever, generator and
monitor processes) with llama.cpp's server (llama-cpp-python, SmolLM2-135M-Instruct GGUF) as the LLM, and
``RAG_LLM__URL`` the only LLM setting (issue 16).

The server has no ``/health``, no ``/info``, no ``/tokenize`` of TGI's shape and says its context length nowhere:
the workers find its ``/v1/models`` and ``/extras/tokenize`` themselves, the retriever budgets prompts within its
default 2048 tokens (llama-cpp-python's default context) and logs where limits and counts come from. Every request
is answered ``ok`` exactly once, with sources, by the GGUF model.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devstack import llamacpp
from devstack.pipeline import Pipeline
from tests.e2e.conftest import responses_in_topic, settings_for
from tests.llm_servers import require_llama_cpp
from workers.client import RagClient
from workers.contracts.messages import Request, Response
from workers.generator.citations import sentences

#: Settings a user would not set for llama.cpp: any LLM setting but the URL, and the old tokenizer setting.
_NOT_SET = ("RAG_LLM__", "RAG_RETRIEVER__LLM_TOKENIZER")


@pytest.mark.slow
def test_twenty_public_questions_through_llama_cpp(
    stack: Any, pipeline_env: dict[str, str], questions: list[dict[str, Any]], tmp_path: Path
) -> None:
    require_llama_cpp()
    assert len(questions) == 20
    with llamacpp.llama_cpp_server(log_path=tmp_path / "llama-cpp.log") as (url, _proc):
        env = {k: v for k, v in {**os.environ, **pipeline_env}.items() if not k.startswith(_NOT_SET)}
        env["RAG_LLM__URL"] = url
        settings = settings_for(env)
        pipeline = Pipeline(env=env, log_dir=tmp_path / "logs", inherit=False)
        pipeline.start()
        try:
            pipeline.wait_ready(timeout_s=240)
            with RagClient(settings) as client:
                # llama-cpp-python answers one request at a time and reads a prompt at 30-60 tokens/s on this
                # 2-core machine: one passage per prompt, questions in waves of five (each within the generator's
                # 120 s call timeout, queueing at the server included).
                reqs = [Request(query=q["q"], top_k=1, generation={"max_new_tokens": 24}) for q in questions]
                t0 = time.perf_counter()
                answers: dict[uuid.UUID, Response] = {}
                for i in range(0, len(reqs), 5):
                    answers.update(client.ask_many(reqs[i : i + 5], timeout_s=300))
                wall = time.perf_counter() - t0
                assert client.duplicates == 0
        finally:
            codes = pipeline.stop(timeout_s=40)
    assert all(c == 0 for c in codes.values()), codes
    assert set(answers) == {r.request_id for r in reqs}
    statuses = [a.status for a in answers.values()]
    assert statuses.count("ok") == 20, [(a.status, a.error) for a in answers.values() if a.status != "ok"]
    for a in answers.values():
        assert a.answer and a.answer.strip() and a.sources
        assert a.model_id and a.model_id.endswith(".gguf")
        assert a.finish_reason in ("stop", "length") and 0 < a.usage.completion_tokens <= 24
        assert a.provenance is not None and a.provenance.llm_api == "chat"
    hits = sum(
        any(s.document_id in q["topics"] for s in answers[r.request_id].sources)
        for r, q in zip(reqs, questions, strict=True)
    )
    first = answers[reqs[0].request_id]
    print(f"\nllama.cpp: 20 answers in {wall:.1f}s, hit@1={hits / 20:.2f}; {reqs[0].query!r} -> {first.answer!r}")
    # SmolLM2's answers: every source marked cited or not (by attribution: a 135M model writes no [n] markers),
    # no answer repeating a sentence; the share citing a passage and the mean groundedness are a baseline.
    cited = [a for a in answers.values() if any(s.cited for s in a.sources)]
    assert all(s.cited_by in (None, "model", "attribution") for a in answers.values() for s in a.sources)
    assert all((s.cited_by is not None) == s.cited for a in answers.values() for s in a.sources)
    for a in answers.values():
        said = [x.strip().lower() for x in sentences(a.answer or "") if len(x.split()) >= 3]
        assert len(said) == len(set(said)), a.answer
    grounded = [a.groundedness for a in answers.values() if a.groundedness is not None]
    print(f"answers citing a passage: {len(cited)}/20; mean groundedness {sum(grounded) / max(1, len(grounded)):.2f}")

    produced = responses_in_topic(stack.bootstrap_servers, settings.topics.name("responses"))
    assert sorted(r.request_id for r in produced) == sorted(r.request_id for r in reqs)

    # Each worker said where the LLM's limits and token counts come from.
    retriever_log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("retriever*.log"))
    assert "POST /extras/tokenize (llama-cpp-python)" in retriever_log
    assert "retriever.default_max_total_tokens=2048" in retriever_log
    generator_log = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("generator*.log"))
    assert "health=/v1/models api=chat" in generator_log
