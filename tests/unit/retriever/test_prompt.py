"""Prompt building within token limits, templates, and the LLM token counters' HTTP parsing (no network)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
import pytest

from workers.adapters.interfaces import LLMTokenCounter, ServerInfo
from workers.adapters.llm_server import LLMServerClient, parse_server_info
from workers.adapters.tokenizers import CachedTokenCounter
from workers.contracts.errors import (
    ConfigError,
    PermanentError,
    PromptTooLargeError,
    RetryableError,
    ServiceUnavailableError,
)
from workers.retriever.prompt import (
    ESTIMATE_MARGIN_TOKENS,
    PER_MESSAGE_OVERHEAD_TOKENS,
    TEMPLATES,
    PromptTemplate,
    build_prompt,
    get_template,
)
from workers.settings import LLMSettings


@dataclass(frozen=True)
class P:
    """A ranked passage (what ``store.Hit`` provides to prompt building)."""

    document_id: str
    text: str


class WordCounter:
    """One token per whitespace-separated word, plus one BOS token per text; records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def count(self, texts: list[str]) -> list[int]:
        self.calls.append(list(texts))
        return [len(t.split()) + 1 for t in texts]


def passage(rank: int, words: int = 250) -> P:
    return P(document_id=f"doc{rank}", text=" ".join(f"r{rank}w{i}" for i in range(words)))


def test_five_passages_of_250_tokens_fit_2048_with_1000_new_tokens() -> None:
    hits = [passage(r) for r in range(5)]
    counter = WordCounter()
    built = build_prompt(
        "How does the with statement work?",
        hits,
        get_template("default"),
        counter.count,
        max_input_tokens=None,
        max_total_tokens=2048,
        max_new_tokens=1000,
    )
    assert built.prompt_tokens + 1000 <= 2048
    assert built.max_new_tokens == 1000  # the generation budget is never changed
    # 250 words + "[n] (docN)" per passage: three fit in 1048 tokens, four do not.
    assert built.passages_dropped == 2
    assert [p.document_id for p in built.passages_kept] == ["doc0", "doc1", "doc2"]
    user = built.messages[-1].content
    assert "r2w249" in user and "r3w0" not in user and "r4w0" not in user
    assert "[1] (doc0) r0w0" in user and "[3] (doc2)" in user
    # Counted in a few calls (pieces, the chosen prompt, one more passage tried), not one per passage.
    assert len(counter.calls) <= 3
    joined = "\n".join(m.content for m in built.messages)
    assert built.prompt_tokens == counter.count([joined])[0] + PER_MESSAGE_OVERHEAD_TOKENS * 3


def test_prompt_tokens_are_the_whole_filled_template() -> None:
    counter = WordCounter()
    built = build_prompt("q?", [passage(0, 10)], get_template("default"), counter.count, None, 4096, 100)
    joined = "\n".join(m.content for m in built.messages)
    assert built.prompt_tokens == len(joined.split()) + 1 + PER_MESSAGE_OVERHEAD_TOKENS * 3
    assert built.passages_dropped == 0 and built.passage_tokens == [10 + 2]
    assert [m.role for m in built.messages] == ["system", "user"]


def test_max_input_tokens_also_limits() -> None:
    hits = [passage(r, 100) for r in range(4)]
    built = build_prompt("q", hits, get_template("default"), WordCounter().count, 300, 100_000, 10)
    assert built.prompt_tokens <= 300
    assert built.passages_dropped == 2
    assert [p.document_id for p in built.passages_kept] == ["doc0", "doc1"]


def test_no_limits_keeps_everything() -> None:
    hits = [passage(r, 50) for r in range(3)]
    built = build_prompt("q", hits, get_template("concise"), WordCounter().count, None, None, 10)
    assert built.passages_dropped == 0 and len(built.passages_kept) == 3


def test_too_large_even_without_passages_raises() -> None:
    question = " ".join(["word"] * 500)
    with pytest.raises(PromptTooLargeError, match="without any passage"):
        build_prompt(question, [passage(0)], get_template("default"), WordCounter().count, None, 600, 200)
    with pytest.raises(PromptTooLargeError, match="max_new_tokens"):
        build_prompt("q", [passage(0)], get_template("default"), WordCounter().count, None, 512, 512)


def test_non_additive_tokenizer_is_corrected_by_the_exact_count() -> None:
    """A tokenizer that counts the joined prompt higher than its pieces: the exact count wins."""

    def count(texts: list[str]) -> list[int]:
        return [len(t.split()) + 1 + (t.count("[") * 3 if len(t) > 2000 else 0) for t in texts]

    hits = [passage(r, 100) for r in range(6)]
    built = build_prompt("q", hits, get_template("default"), count, None, 700, 100)
    assert built.prompt_tokens <= 600
    assert built.prompt_tokens == count(["\n".join(m.content for m in built.messages)])[0] + 24


def test_estimate_far_under_the_budget_skips_the_whole_prompt_count() -> None:
    counter = WordCounter()
    hits = [passage(r, 100) for r in range(3)]
    built = build_prompt("q?", hits, get_template("default"), counter.count, None, 4096, 100, ESTIMATE_MARGIN_TOKENS)
    assert len(counter.calls) == 1  # the pieces only
    assert built.passages_dropped == 0
    joined = "\n".join(m.content for m in built.messages)
    exact = counter.count([joined])[0] + PER_MESSAGE_OVERHEAD_TOKENS * 3
    assert built.prompt_tokens >= exact  # the word counter is additive; the pieces' separators add words only
    assert built.prompt_tokens - exact <= 3


def test_estimate_near_the_budget_is_checked_by_the_whole_prompt_count() -> None:
    """Within the margin the exact count decides, as without a margin: a non-additive tokenizer is caught."""

    def count(texts: list[str]) -> list[int]:
        return [len(t.split()) + 1 + (t.count("[") * 3 if len(t) > 2000 else 0) for t in texts]

    hits = [passage(r, 100) for r in range(6)]
    with_margin = build_prompt("q", hits, get_template("default"), count, None, 700, 100, ESTIMATE_MARGIN_TOKENS)
    without = build_prompt("q", hits, get_template("default"), count, None, 700, 100)
    assert with_margin == without
    assert with_margin.prompt_tokens <= 600


def test_cached_token_counter_counts_each_text_once_and_evicts_lru() -> None:
    inner = WordCounter()
    cached = CachedTokenCounter(inner, max_entries=2)
    assert cached.count(["a b", "c", "a b"]) == [3, 2, 3]
    assert cached.count(["c", "a b"]) == [2, 3]
    assert inner.calls == [["a b", "c"]] and cached.hits == 2 and cached.misses == 2  # one call, distinct texts
    cached.count(["d e f"])  # evicts the least recently used ("c" was used before "a b")
    assert len(cached) == 2
    cached.count(["a b"])
    assert len(inner.calls) == 2
    cached.count(["c"])
    assert inner.calls[-1] == ["c"]
    off = CachedTokenCounter(inner, max_entries=0)
    off.count(["x"]), off.count(["x"])
    assert inner.calls[-2:] == [["x"], ["x"]]


def test_no_passages_placeholder_and_rank_order() -> None:
    built = build_prompt("q?", [], get_template("default"), WordCounter().count, None, 2048, 100)
    assert "(no passages)" in built.messages[-1].content
    assert built.passages_kept == [] and built.passages_dropped == 0


def test_templates_registry_and_stable_hashes() -> None:
    assert {"default", "concise"} <= set(TEMPLATES)
    default = get_template("default")
    assert len(default.template_hash) == 12 and int(default.template_hash, 16) >= 0
    assert default.template_hash != get_template("concise").template_hash
    same = PromptTemplate(template_id="x", system=default.system, user=default.user)
    assert same.template_hash == default.template_hash  # the hash is of the text, not the id
    changed = PromptTemplate(template_id="default", system=default.system + " ", user=default.user)
    assert changed.template_hash != default.template_hash
    assert "[1]" in default.system and "only" in default.system.lower()
    with pytest.raises(ConfigError, match="unknown prompt template"):
        get_template("nope")


# -- tokens.py: TGI /tokenize and /info parsing ---------------------------------------------------------


def _mock(handler) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_server_tokenize_counter_counts_the_returned_tokens() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == "/tokenize"
        body = json.loads(request.content)
        seen.append(body)
        toks = [{"id": i, "text": w, "start": 0, "stop": 0} for i, w in enumerate(body["inputs"].split())]
        return httpx.Response(200, json=toks)

    with _mock(handler) as client:
        counter = LLMServerClient(LLMSettings(url="http://llm:8080/"), http=client)
        assert isinstance(counter, LLMTokenCounter)
        assert counter.count(["a b c", "one", ""]) == [3, 1, 0]
    assert seen[0] == {"inputs": "Hello, world"}  # the probe that found TGI's route (llm_discovery)
    assert seen[1] == {"inputs": "a b c"}


@pytest.mark.parametrize(("status", "error"), [(503, RetryableError), (429, RetryableError), (422, PermanentError)])
def test_server_tokenize_counter_classifies_errors(status: int, error: type[Exception]) -> None:
    with _mock(lambda request: httpx.Response(status, text="nope")) as client:
        with pytest.raises(error, match=str(status)):
            LLMServerClient(LLMSettings(url="http://llm"), http=client).count(["x"])


def test_server_tokenize_counter_unreachable_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with _mock(handler) as client, pytest.raises(RetryableError, match="refused"):
        LLMServerClient(LLMSettings(url="http://llm"), http=client).count(["x"])


def test_parse_server_info_current_and_old_tgi() -> None:
    assert parse_server_info({"model_id": "m", "max_input_tokens": 1024, "max_total_tokens": 2048}) == ServerInfo(
        "m", max_input_tokens=1024, max_total_tokens=2048
    )
    assert parse_server_info({"max_input_length": 1000, "max_total_tokens": 1512}).max_input_tokens == 1000
    assert parse_server_info({}) == ServerInfo("unknown")


def test_fetch_server_limits() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200)
        if request.url.path == "/info":
            return httpx.Response(200, json={"model_id": "tiny", "max_input_tokens": 1535, "max_total_tokens": 2048})
        return httpx.Response(404)

    with _mock(handler) as client:
        info = LLMServerClient(LLMSettings(url="http://llm"), http=client).fetch_info()
        assert info == ServerInfo("tiny", max_input_tokens=1535, max_total_tokens=2048)
    with _mock(lambda r: httpx.Response(503, text="loading")) as client:
        with pytest.raises(ServiceUnavailableError):
            LLMServerClient(LLMSettings(url="http://llm"), http=client).fetch_info()
