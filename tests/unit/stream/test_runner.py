"""The stream runner with fake stages and a fake answer store: decisions on outputs, errors and answers (no I/O)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workers.contracts.errors import LLMValidationError, PermanentError, RetryableError
from workers.contracts.messages import ChatMessage, DeadLetter, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.retry import RetryPolicy
from workers.stream.records import Incoming
from workers.stream.results import Failure, StageResult
from workers.stream.runner import Routes, StreamRunner, dead_letter_errors

ROUTES = Routes(prompts="p", responses="r", dead_letter="dl", max_message_bytes=100_000)
FAST = RetryPolicy(3, 0.001, 0.002)


def _inc(value: bytes | None, offset: int = 0, headers: dict[str, str] | None = None) -> Incoming:
    return Incoming("in", 0, offset, b"k", value, headers or {}, 0)


def _prompt(req: Request, text: str = "passage") -> Prompt:
    return Prompt(
        request_id=req.request_id,
        request=req,
        passages=[],
        messages=[ChatMessage(role="user", content=req.query + " " + text)],
        template_id="t",
        template_hash="h",
        prompt_tokens=3,
        max_new_tokens=8,
    )


class Retrieve:
    """A fake retriever stage: a Prompt per request, or what ``plan`` says for a query."""

    name = "retriever"

    def __init__(self, plan: dict[str, Any] | None = None) -> None:
        self.plan = plan or {}
        self.calls: list[list[str]] = []

    async def run(self, inputs: Sequence[Request]) -> list[StageResult]:
        self.calls.append([r.query for r in inputs])
        out: list[StageResult] = []
        for r in inputs:
            what = self.plan.get(r.query)
            if isinstance(what, BaseException):
                raise what
            out.append(what if what is not None else _prompt(r, "x" * (200_000 if r.query == "huge" else 1)))
        return out


class Generate:
    """A fake generator stage: answers every prompt with its query; counts calls."""

    name = "generator"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.answered: list[uuid.UUID] = []
        self.delay_s = delay_s

    async def run(self, inputs: Sequence[Prompt]) -> list[StageResult]:
        await asyncio.sleep(self.delay_s)
        self.answered.extend(p.request_id for p in inputs)
        return [Response(request_id=p.request_id, answer=f"answer to {p.request.query}") for p in inputs]


class Store:
    """A fake answer store."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Response] = {}
        self.down = False

    async def get(self, request_id: uuid.UUID) -> Response | None:
        if self.down:
            raise RetryableError("store away")
        return self.rows.get(request_id)

    async def put(self, response: Response) -> bool:
        if self.down:
            raise RetryableError("store away")
        if response.status in ("ok", "error", "expired"):
            return self.rows.setdefault(response.request_id, response) is response
        return False


def _run(runner: StreamRunner, batch: list[Incoming]) -> list[list[Any]]:
    return asyncio.run(runner.handle(batch))


def _runner(stages: list[Any], **kw: Any) -> StreamRunner:
    kw.setdefault("on_error", dead_letter_errors)
    return StreamRunner(stages, input_model=kw.pop("input_model", Request), routes=ROUTES, retry=FAST, **kw)


def test_prompts_of_a_retriever_go_to_the_prompts_topic_with_the_request_key_and_headers() -> None:
    req = Request(query="what does pass do?")
    outs = _run(_runner([Retrieve()]), [_inc(encode(req), headers={"traceparent": "tp", "other": "x"})])
    assert [o.topic for o in outs[0]] == ["p"]
    assert decode(outs[0][0].value, Prompt).request_id == req.request_id
    assert outs[0][0].key == b"k"
    assert outs[0][0].headers == {"traceparent": "tp", "request_id": str(req.request_id)}


def test_a_bad_message_is_dead_lettered_with_the_reason_and_the_others_go_on() -> None:
    req = Request(query="fine")
    outs = _run(_runner([Retrieve()]), [_inc(b"{not json", 0), _inc(encode(req), 1)])
    letter = decode(outs[0][0].value, DeadLetter)
    assert outs[0][0].topic == "dl" and letter.error_class == "bad_message" and "not JSON" in letter.error_message
    assert letter.stage == "retriever" and letter.offset == 0
    assert [o.topic for o in outs[1]] == ["p"]


def test_an_answer_goes_to_the_reply_partition_the_request_names() -> None:
    """Issue 13: a gateway replica's partition of the responses topic (or of its reply topic), produced to
    explicitly; without one the key decides."""
    mine = Request(query="late", deadline=datetime.now(UTC) - timedelta(seconds=1), reply_partition=7)
    outs = _run(_runner([Retrieve()]), [_inc(encode(mine))])
    assert [(o.topic, o.partition) for o in outs[0]] == [("r", 7)]  # one message, no copy
    other = Request(query="late", deadline=mine.deadline, reply_topic="mine", reply_partition=2)
    outs = _run(_runner([Retrieve()]), [_inc(encode(other))])
    assert [(o.topic, o.partition) for o in outs[0]] == [("r", None), ("mine", 2)]
    plain = Request(query="late", deadline=mine.deadline)
    assert [(o.topic, o.partition) for o in _run(_runner([Retrieve()]), [_inc(encode(plain))])[0]] == [("r", None)]


def test_the_default_error_hook_raises_instead_of_skipping() -> None:
    runner = StreamRunner([Retrieve()], input_model=Request, routes=ROUTES, retry=FAST)
    with pytest.raises(PermanentError):
        _run(runner, [_inc(b"{not json")])


def test_an_expired_request_is_answered_expired_without_running_the_stage() -> None:
    stage = Retrieve()
    late = Request(query="late", deadline=datetime.now(UTC) - timedelta(seconds=1), reply_topic="mine")
    outs = _run(_runner([stage]), [_inc(encode(late))])
    assert [o.topic for o in outs[0]] == ["r", "mine"]  # the answer, and its copy to the reply topic
    resp = decode(outs[0][0].value, Response)
    assert resp.status == "expired" and resp.error is not None and resp.error.stage == "retriever"
    assert stage.calls == []


def test_a_deadline_header_expires_too() -> None:
    req = Request(query="late by header")
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
    outs = _run(_runner([Retrieve()]), [_inc(encode(req), headers={"deadline": past})])
    assert decode(outs[0][0].value, Response).status == "expired"


def test_the_monolith_chain_hands_prompts_over_in_memory_and_records_every_event() -> None:
    events: list[Any] = []

    class Recorder:
        async def record_events(self, evs: Sequence[tuple[Any, Incoming]]) -> None:
            events.extend(e for e, _ in evs)

    gen = Generate()
    req = Request(query="chain")
    outs = _run(_runner([Retrieve(), gen], recorder=Recorder()), [_inc(encode(req))])
    assert [o.topic for o in outs[0]] == ["r"]  # no prompts-topic hop
    assert decode(outs[0][0].value, Response).answer == "answer to chain"
    assert [type(e).__name__ for e in events] == ["Request", "Prompt", "Response"]
    assert gen.answered == [req.request_id]


def test_a_stage_failure_becomes_an_error_answer_and_a_dead_letter() -> None:
    req = Request(query="cannot")
    failing = Retrieve({"cannot": Failure(PermanentError("no such template"))})
    outs = _run(_runner([failing]), [_inc(encode(req))])
    by_topic = {o.topic: o for o in outs[0]}
    resp = decode(by_topic["r"].value, Response)
    assert resp.status == "error" and resp.error is not None and resp.error.message == "no such template"
    assert decode(by_topic["dl"].value, DeadLetter).request_id == req.request_id


def test_a_failure_that_asks_for_no_dead_letter_only_answers() -> None:
    req = Request(query="away")
    stage = Retrieve({"away": Failure(RetryableError("model away"), status="model_unavailable", dead_letter=False)})
    outs = _run(_runner([stage]), [_inc(encode(req))])
    assert [o.topic for o in outs[0]] == ["r"]
    assert decode(outs[0][0].value, Response).status == "model_unavailable"


def test_a_prompt_larger_than_the_producer_limit_is_refused_with_an_answer_and_a_dead_letter() -> None:
    outs = _run(_runner([Retrieve()]), [_inc(encode(Request(query="huge")))])
    by_topic = {o.topic: o for o in outs[0]}
    assert set(by_topic) == {"r", "dl"}
    assert decode(by_topic["dl"].value, DeadLetter).error_class == "prompt_too_large"


def test_a_retryable_batch_failure_is_retried_then_the_batch_is_split_so_one_bad_input_fails_alone() -> None:
    stage = Retrieve({"poison": LLMValidationError("bad input")})
    reqs = [Request(query="a"), Request(query="poison"), Request(query="b")]
    outs = _run(_runner([stage]), [_inc(encode(r), i) for i, r in enumerate(reqs)])
    assert [o.topic for o in outs[0]] == ["p"] and [o.topic for o in outs[2]] == ["p"]
    assert sorted(o.topic for o in outs[1]) == ["dl", "r"]
    assert stage.calls[0] == ["a", "poison", "b"] and ["poison"] in stage.calls


def test_a_transient_failure_is_retried_within_the_policy() -> None:
    class Flaky(Retrieve):
        def __init__(self) -> None:
            super().__init__()
            self.fails = 2

        async def run(self, inputs: Sequence[Request]) -> list[StageResult]:
            if self.fails:
                self.fails -= 1
                raise RetryableError("database restarting")
            return await super().run(inputs)

    outs = _run(_runner([Flaky()]), [_inc(encode(Request(query="q")))])
    assert [o.topic for o in outs[0]] == ["p"]


def test_an_answer_given_before_is_re_emitted_from_the_store_without_running_a_stage() -> None:
    store, gen = Store(), Generate()
    req = Request(query="again")
    runner = _runner([Retrieve(), gen], answers=store)
    first = _run(runner, [_inc(encode(req), 0)])
    again = _run(runner, [_inc(encode(req), 1)])
    assert decode(first[0][0].value, Response) == decode(again[0][0].value, Response)
    assert gen.answered == [req.request_id]


def test_two_copies_of_a_request_in_flight_at_once_are_generated_once() -> None:
    store, gen = Store(), Generate(delay_s=0.05)
    req = Request(query="twice")
    runner = _runner([Retrieve(), gen], answers=store)

    async def both() -> list[list[list[Any]]]:
        return list(await asyncio.gather(runner.handle([_inc(encode(req), 0)]), runner.handle([_inc(encode(req), 1)])))

    a, b = asyncio.run(both())
    assert decode(a[0][0].value, Response).answer == decode(b[0][0].value, Response).answer
    assert gen.answered == [req.request_id]


def test_without_the_store_the_runner_still_answers_and_does_not_wait_forever() -> None:
    store, gen = Store(), Generate()
    store.down = True
    runner = _runner([Retrieve(), gen], answers=store, store_retry=RetryPolicy(2, 0.001, 0.001))
    outs = _run(runner, [_inc(encode(Request(query="store away")))])
    assert decode(outs[0][0].value, Response).status == "ok"
    assert runner.metrics.store_errors._value.get() == 2  # the lookup and the write, each after its retries


def test_the_answer_of_a_retryable_failure_is_not_remembered() -> None:
    store = Store()
    req = Request(query="away")
    stage = Retrieve({"away": Failure(RetryableError("model away"), status="model_unavailable", dead_letter=False)})
    _run(_runner([stage], answers=store), [_inc(encode(req))])
    assert store.rows == {}


def test_the_replay_run_header_is_stamped_into_the_prompt_provenance() -> None:
    outs = _run(_runner([Retrieve()]), [_inc(encode(Request(query="q")), headers={"replay_run": "run7"})])
    assert decode(outs[0][0].value, Prompt).provenance.run_id == "run7"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"top_k": 0}, "top_k"),
        ({"query": ""}, "query"),
        ({"query": "q" * 900_000}, "query"),
    ],
)
def test_a_request_that_fails_validation_is_answered_rejected_at_once_and_dead_lettered(
    change: dict[str, Any], reason: str
) -> None:
    """Issue 14 #4: the client waiting on the request id gets an answer, not its timeout (on the responses topic
    only: the reply topic an invalid message names is not trusted)."""
    stage = Retrieve()
    good = Request(query="fine", reply_topic="mine")
    body = {**json.loads(encode(good)), **change}
    outs = _run(_runner([stage]), [_inc(json.dumps(body).encode())])
    assert [o.topic for o in outs[0]] == ["r", "dl"]
    resp = decode(outs[0][0].value, Response)
    assert resp.request_id == good.request_id and resp.status == "rejected" and resp.answer is None
    assert resp.error is not None and resp.error.error_class == "bad_message" and reason in resp.error.message
    assert resp.error.stage == "retriever" and outs[0][0].headers["request_id"] == str(good.request_id)
    letter = decode(outs[0][1].value, DeadLetter)
    assert letter.request_id == good.request_id and reason in letter.error_message
    assert stage.calls == []


def test_a_rejected_message_is_answered_under_its_header_id_when_the_body_has_none() -> None:
    rid = uuid.uuid4()
    outs = _run(_runner([Retrieve()]), [_inc(b"{not json", headers={"request_id": str(rid)})])
    assert [o.topic for o in outs[0]] == ["r", "dl"]
    assert decode(outs[0][0].value, Response).request_id == rid
    assert decode(outs[0][1].value, DeadLetter).request_id == rid


def test_a_request_without_request_id_is_a_dead_letter_with_the_reason_and_nothing_else() -> None:
    """Issue 14 #9: no invented request id (an answer under an id nobody asked with breaks effectively-once)."""
    stage = Retrieve()
    body = json.loads(encode(Request(query="no id here")))
    del body["request_id"]
    outs = _run(_runner([stage]), [_inc(json.dumps(body).encode())])
    assert [o.topic for o in outs[0]] == ["dl"]
    letter = decode(outs[0][0].value, DeadLetter)
    assert letter.error_class == "bad_message" and "request_id: Value error, missing" in letter.error_message
    assert letter.request_id is None and stage.calls == []
    # with a request_id header (a client's), that id is answered rejected as well
    rid = uuid.uuid4()
    outs = _run(_runner([stage]), [_inc(json.dumps(body).encode(), headers={"request_id": str(rid)})])
    assert [o.topic for o in outs[0]] == ["r", "dl"]
    resp = decode(outs[0][0].value, Response)
    assert resp.request_id == rid and resp.status == "rejected" and stage.calls == []
