"""The generator under LLM faults and redelivery, on the real broker, PostgreSQL and the simulated LLM server.

Issue 3, inputs 8 and 9, plus effectively-once (a redelivered prompt is re-emitted from the answer store, not
generated again) and deadlines (no LLM call for an expired prompt).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry

from tests.kafka_helpers import committed_and_end, drain, produce
from workers.adapters.answers import PgAnswerStore
from workers.adapters.postgres import open_async_pool
from workers.contracts.messages import ChatMessage, DeadLetter, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.generator.app import build_llm, build_runner
from workers.generator.metrics import GeneratorMetrics
from workers.generator.stage import GeneratorStage
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop
from workers.kafka.metrics import build_loop_metrics
from workers.kafka.producer import KafkaProducer
from workers.settings import GeneratorSettings, KafkaSettings, LLMSettings, Settings, TopicSettings
from workers.stream.metrics import build_runner_metrics


def _prompt(q: str, deadline: datetime | None = None) -> Prompt:
    req = Request(query=q, generation={"max_new_tokens": 8}, deadline=deadline)
    return Prompt(
        request_id=req.request_id,
        request=req,
        passages=[],
        messages=[ChatMessage(role="user", content=q)],
        template_id="test",
        template_hash="0",
        prompt_tokens=5,
        max_new_tokens=8,
    )


class Harness:
    """One in-process generator worker loop on per-test topics, with the answer store in PostgreSQL."""

    def __init__(self, stack: Any, sim_url: str, unique: str, make_topics: Any, **llm: Any) -> None:
        self.topics = TopicSettings(prefix=f"gf{unique}.")
        make_topics([self.topics.name("prompts"), self.topics.name("responses"), self.topics.name("dead_letter")])
        self.group = f"gen-{unique}"
        self.stack = stack
        params: dict[str, Any] = {"url": sim_url, "max_in_flight": 4, "timeout_s": 10, "backoff_initial_s": 0.05,
                                  "backoff_max_s": 0.2, **llm}  # fmt: skip
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers),
            topics=self.topics,
            llm=LLMSettings(**params),
            generator=GeneratorSettings(answer_table=f"answers_{unique}"),
        )
        self.registry = CollectorRegistry()
        self.metrics = GeneratorMetrics(self.registry)
        self.loop_metrics = build_loop_metrics(self.registry, role="generator")
        self.runner_metrics = build_runner_metrics(self.registry, prefix="ragstream_generator")

    def send(self, prompts: list[Prompt]) -> None:
        produce(self.stack.bootstrap_servers, self.topics.name("prompts"),
                [(str(p.request_id), encode(p)) for p in prompts])  # fmt: skip

    async def run_until(self, responses: int, dead_letters: int = 0) -> tuple[list[Response], list[DeadLetter]]:
        """Run the worker until the responses (and dead letters) arrived; stop it; return them."""
        pool = await open_async_pool(self.stack.database_url)
        store = PgAnswerStore(pool, self.settings.generator.answer_table)
        await store.ensure_schema()
        llm = build_llm(self.settings, self.metrics)
        await llm.info()
        runner = build_runner(self.settings, [GeneratorStage(llm, self.metrics)], store, metrics=self.runner_metrics)
        loop = WorkerLoop(
            LoopConfig(
                role="generator",
                topics=[self.topics.name("prompts")],
                dead_letter_topic=self.topics.name("dead_letter"),
                max_in_flight=4,
                batch_max=1,
                shutdown_timeout_s=10,
            ),  # fmt: skip
            Consumer(consumer_config(self.settings.kafka, self.group)),
            KafkaProducer(self.settings.kafka, poll_after_produce=False),
            runner.handle,
            self.loop_metrics,
        )
        task = asyncio.create_task(loop.run())
        try:
            got = await asyncio.to_thread(drain, self.stack.bootstrap_servers, self.topics.name("responses"), responses)
            dls = await asyncio.to_thread(
                drain, self.stack.bootstrap_servers, self.topics.name("dead_letter"), dead_letters, 30.0, 0.5
            )
        finally:
            loop.request_stop()
            await asyncio.wait_for(task, 30)
            await llm.close()
            await pool.close()
        return [decode(v, Response) for v in got], [decode(v, DeadLetter) for v in dls]

    def counter(self, name: str, **labels: str) -> float:
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def offsets_done(self) -> bool:
        committed, ends = committed_and_end(self.stack.bootstrap_servers, self.group, self.topics.name("prompts"), 3)
        return committed == ends


def test_overloaded_twice_then_success_gives_one_answer_after_three_attempts(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any
) -> None:
    h = Harness(stack, sim_llm.url, unique, make_topics)
    sim_llm.faults([{"kind": "overloaded", "next": 2}])
    p = _prompt("overloaded?")
    h.send([p])
    responses, dls = asyncio.run(h.run_until(1))
    assert len(responses) == 1 and not dls
    r = responses[0]
    assert r.request_id == p.request_id and r.status == "ok" and r.answer
    assert r.attempts == 3
    assert h.counter("ragstream_generator_llm_retries_total", error="LLMOverloadedError") == 2
    assert sim_llm.stats()["faults"].get("overloaded") == 2
    assert h.offsets_done()


def test_loading_forever_gives_model_unavailable_and_commits(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any
) -> None:
    h = Harness(stack, sim_llm.url, unique, make_topics, max_attempts=3)
    sim_llm.faults([{"kind": "loading", "window_s": 600, "estimated_time": 600.0}])
    p = _prompt("still loading?")
    h.send([p])
    responses, _ = asyncio.run(h.run_until(1))
    assert [r.status for r in responses] == ["model_unavailable"]
    assert responses[0].error is not None and responses[0].error.error_class == "model_loading"
    assert responses[0].attempts == 3
    assert h.offsets_done()  # the offset moved on: the request was answered, not left behind


def test_error_inside_stream_is_a_typed_failure_not_a_partial_answer(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any
) -> None:
    h = Harness(stack, sim_llm.url, unique, make_topics)
    sim_llm.faults([{"kind": "stream_error", "after_tokens": 3}])
    p = _prompt("The answer is")
    h.send([p])
    responses, dls = asyncio.run(h.run_until(1, dead_letters=1))
    assert len(responses) == 1
    r = responses[0]
    assert r.status == "error" and r.answer is None
    assert r.error is not None and r.error.error_class == "llm_stream_error"
    assert len(dls) == 1 and dls[0].error_class == "llm_stream_error" and dls[0].request_id == p.request_id
    assert h.counter("ragstream_generator_errors_total", stage="generator", error_class="llm_stream_error") == 1
    assert not any(x.status == "ok" for x in responses)


def test_redelivered_prompt_is_reemitted_from_the_answer_store_without_an_llm_call(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any
) -> None:
    h = Harness(stack, sim_llm.url, unique, make_topics)
    p = _prompt("answer me once")
    h.send([p, p])  # the second copy stands for a redelivery after the answer was produced
    responses, _ = asyncio.run(h.run_until(2))
    assert [r.request_id for r in responses] == [p.request_id, p.request_id]
    assert responses[0].model_dump(mode="json") == responses[1].model_dump(mode="json")  # the stored answer
    assert sim_llm.stats()["requests_seen"] == 1
    assert h.counter("ragstream_generator_answers_reemitted_total") == 1

    # a later replay of the same prompt into the live topic: still no second LLM call
    h.send([p])
    more, _ = asyncio.run(h.run_until(3))
    assert len(more) == 3 and all(r == responses[0] for r in more)
    assert sim_llm.stats()["requests_seen"] == 1


def test_expired_prompt_is_answered_without_gpu_time(stack: Any, sim_llm: Any, unique: str, make_topics: Any) -> None:
    h = Harness(stack, sim_llm.url, unique, make_topics)
    p = _prompt("too late", deadline=datetime.now(UTC) - timedelta(seconds=1))
    h.send([p])
    responses, _ = asyncio.run(h.run_until(1))
    assert [r.status for r in responses] == ["expired"]
    assert sim_llm.stats()["requests_seen"] == 0
    assert h.counter("ragstream_generator_expired_total", stage="generator") == 1
    assert uuid.UUID(str(responses[0].request_id)) == p.request_id
