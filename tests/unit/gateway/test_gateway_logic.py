"""The gateway's pure parts: the OpenAI request mapping, API keys and rate limits, stream assembly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from workers.contracts.messages import ErrorInfo, Passage, Response, Source, TokenEvent, Usage
from workers.gateway.assembly import ContradictionError, StreamAssembler
from workers.gateway.limits import ApiKeys, RateLimiter, key_hash, new_key
from workers.gateway.openai_api import BadRequest, completion, parse_body, response_error, to_request

RID = uuid.uuid4()
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def mapped(body: dict) -> object:
    return to_request(parse_body(body), request_id=RID, reply_partition=3, now=NOW, timeout_s=30)


def test_openai_fields_map_onto_the_request() -> None:
    req = mapped(
        {
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "What does len do?"},
                {"role": "assistant", "content": "It counts."},
                {"role": "user", "content": [{"type": "text", "text": "and its "}, {"type": "text", "text": "type?"}]},
            ],
            "max_completion_tokens": 40,
            "max_tokens": 99,
            "temperature": 0.5,
            "top_p": 0.9,
            "seed": 11,
            "stop": "\n\n",
            "stream": True,
            "top_k": 3,
            "presence_penalty": 0.1,  # ignored
        }
    )
    assert req.query == "and its type?" and req.request_id == RID and req.reply_partition == 3  # type: ignore[attr-defined]
    assert [m.role for m in req.history] == ["system", "user", "assistant"]  # type: ignore[attr-defined]
    g = req.generation  # type: ignore[attr-defined]
    assert (g.max_new_tokens, g.temperature, g.top_p, g.seed, g.stop) == (40, 0.5, 0.9, 11, ["\n\n"])
    assert req.stream_tokens and req.top_k == 3  # type: ignore[attr-defined]
    assert (req.deadline - NOW).total_seconds() == 30  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "q"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "x" * 20_001}]}, "query"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages"),
        ({"messages": [{"role": "bot", "content": "q"}]}, "messages"),
    ],
)
def test_invalid_bodies_are_bad_requests_naming_the_field(body: dict, param: str) -> None:
    with pytest.raises(BadRequest) as exc:
        mapped(body)
    assert exc.value.param == param, exc.value.message
    with pytest.raises(BadRequest):
        parse_body([1, 2])


def test_answers_and_errors_in_openai_shapes() -> None:
    resp = Response(
        request_id=RID,
        answer="A tuple.",
        finish_reason="length",
        usage=Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12),
        sources=[Source(document_id="d", chunk_id="d#0", score=0.5, cited=True)],
        timings_ms={"llm_ttft_ms": 3.14159},
    )
    body = completion(resp, "ragstream", 5)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "A tuple."}
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["total_tokens"] == 12
    assert body["sources"][0]["chunk_id"] == "d#0" and body["ragstream"]["timings_ms"]["llm_ttft_ms"] == 3.14
    failed = Response(
        request_id=RID,
        status="model_unavailable",
        answer=None,
        error=ErrorInfo(error_class="x", message="m", stage="g"),
    )
    status, err = response_error(failed)
    assert status == 503 and err["error"]["message"] == "m" and err["error"]["type"] == "service_unavailable"


def test_api_keys_by_hash_and_never_by_key() -> None:
    key, digest = new_key()
    keys = ApiKeys(["0" * 64, digest.upper()])
    assert keys.identify(f"Bearer {key}") == "key#1"
    assert keys.identify("Bearer wrong") is None and keys.identify(None) is None
    assert keys.identify(f"Basic {key}") is None
    assert ApiKeys([], allow_anonymous=True).identify(None) == "anonymous"
    assert key_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    with pytest.raises(ValueError, match="positions"):
        ApiKeys(["not-a-hash"])


def test_token_bucket_allows_the_rate_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(10)] == [0.0] * 10  # a second's worth at once
    wait = limiter.take("k")
    assert wait == pytest.approx(0.1)  # the 11th in the same instant
    assert limiter.take("other") == 0.0  # per key
    now[0] = 0.1
    assert limiter.take("k") == 0.0
    now[0] = 100.0
    assert sum(limiter.take("k") == 0.0 for _ in range(20)) == 10  # the bucket holds at most `burst`


def ev(attempt: int, seq: int, offset: int, delta: str, final: bool = False) -> TokenEvent:
    return TokenEvent(request_id=RID, attempt=attempt, seq=seq, offset=offset, delta=delta, final=final)


def test_a_stream_resumes_from_a_new_attempt_without_repeating_text() -> None:
    asm = StreamAssembler()
    assert asm.on_token(ev(1, 0, 0, " lorem")) == " lorem"
    assert asm.on_token(ev(1, 1, 6, " ipsum")) == " ipsum"
    # the generator crashed; the new attempt regenerates from the start with the same seed
    assert asm.on_token(ev(5, 0, 0, " lorem")) == ""
    assert asm.on_token(ev(5, 1, 6, " ipsum dolor")) == " dolor"
    assert asm.on_token(ev(1, 2, 12, " stale")) == ""  # the old attempt is not followed any more
    final = Response(request_id=RID, answer=" lorem ipsum dolor sit")
    assert asm.on_response(final) == " sit" and asm.resumed and asm.sent == final.answer


def test_a_new_attempt_with_other_text_is_a_contradiction() -> None:
    asm = StreamAssembler()
    asm.on_token(ev(1, 0, 0, " lorem ipsum"))
    asm.on_token(ev(2, 0, 0, " lorem"))
    with pytest.raises(ContradictionError):
        asm.on_token(ev(2, 1, 6, " dolor"))
    for answer in (" lorem", " lorem dolor"):  # shorter than what was sent, or other text
        sent = StreamAssembler()
        sent.on_token(ev(1, 0, 0, " lorem ipsum"))
        with pytest.raises(ContradictionError):
            sent.on_response(Response(request_id=RID, answer=answer))


def test_a_missing_event_waits_for_the_response_and_the_passages_come_with_the_final_event() -> None:
    asm = StreamAssembler()
    asm.on_token(ev(1, 0, 0, " a"))
    assert asm.on_token(ev(1, 2, 10, " later")) == ""  # seq 1 is missing: nothing more from this attempt
    last = ev(1, 3, 16, "", final=True).model_copy(
        update={"passages": [Passage(chunk_id="c", document_id="d", score=1.0, text="t", rank=0)]}
    )
    asm.on_token(last)
    assert asm.passages[0].text == "t"
    assert asm.on_response(Response(request_id=RID, answer=" a b c")) == " b c"


def test_gateway_key_prints_a_key_and_its_digest_and_the_gateway_wants_one() -> None:
    from typer.testing import CliRunner

    from workers.cli import app
    from workers.contracts.errors import ConfigError
    from workers.gateway.app import api_keys, reply_partition
    from workers.settings import Settings

    out = CliRunner().invoke(app, ["gateway-key"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    key, digest = lines[0].split()[-1], lines[1].split()[-1]
    assert key_hash(key) == digest and f'["{digest}"]' in lines[2]
    with pytest.raises(ConfigError, match="RAG_GATEWAY__API_KEYS_SHA256"):
        api_keys(Settings())
    assert api_keys(Settings(gateway={"allow_anonymous": True})).identify(None) == "anonymous"
    with pytest.raises(ConfigError, match="not SHA-256"):
        api_keys(Settings(gateway={"api_keys_sha256": ["abc"]}))
    assert [reply_partition(None, "gateway-7"), reply_partition(None, "web"), reply_partition(3, "gateway-7")] == [
        7,
        0,
        3,
    ]


def test_the_gateway_loads_no_ml_library() -> None:
    """ragstream[gateway] has no ML dependency: importing the gateway's wiring loads none."""
    import subprocess
    import sys

    code = (
        "import sys, workers.gateway.app, workers.gateway.http, workers.cli; "
        "ml = {'torch', 'transformers', 'sentence_transformers', 'tokenizers', 'huggingface_hub'}; "
        "print(sorted(ml & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
