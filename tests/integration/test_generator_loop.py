"""The worker loop with the generator's handler, on the real broker and the TGI-compatible server.

Valid prompts are answered once each (both LLM APIs), malformed ones go to the dead-letter topic with the
reason, and the committed offsets reach the end of the input partitions (nothing left behind).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from workers.adapters.llm_server import LLMServerClient
from workers.contracts.messages import ChatMessage, DeadLetter, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.generator.app import build_runner
from workers.generator.metrics import GeneratorMetrics
from workers.generator.stage import GeneratorStage
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop
from workers.kafka.metrics import build_loop_metrics
from workers.kafka.producer import KafkaProducer
from workers.settings import KafkaSettings, LLMSettings, Settings, TopicSettings


def _prompt(q: str) -> Prompt:
    req = Request(query=q, generation={"max_new_tokens": 8})
    return Prompt(
        request_id=req.request_id,
        request=req,
        passages=[],
        messages=[ChatMessage(role="system", content="Answer briefly."), ChatMessage(role="user", content=q)],
        template_id="test",
        template_hash="0",
        prompt_tokens=10,
        max_new_tokens=8,
    )


def _drain(bootstrap: str, topic: str, want: int, timeout_s: float = 60.0) -> list[bytes]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"drain-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        for m in c.consume(100, timeout=0.2):
            if m.error() is None:
                out.append(m.value())
    # a little longer to catch duplicates
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        out.extend(m.value() for m in c.consume(100, timeout=0.2) if m.error() is None)
    c.close()
    return out


@pytest.mark.parametrize("api", ["chat", "text_generation"])
def test_generator_answers_each_prompt_once_and_dead_letters_bad_ones(
    stack: Any, unique: str, make_topics: Any, api: str
) -> None:
    prefix = f"g{unique}."
    topics = TopicSettings(prefix=prefix)
    make_topics([topics.name("prompts"), topics.name("responses"), topics.name("dead_letter")], partitions=3)
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers),
        topics=topics,
        llm=LLMSettings(url=stack.llm_url, api=api, max_in_flight=4, timeout_s=60),
    )
    prompts = [_prompt(f"question {i}") for i in range(6)]
    p = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for pr in prompts:
        p.produce(topics.name("prompts"), encode(pr), key=str(pr.request_id))
    p.produce(topics.name("prompts"), b"{not json", key="bad1")
    p.produce(topics.name("prompts"), b'{"schema_version": 9}', key="bad2")
    assert p.flush(10) == 0

    async def run() -> None:
        registry = CollectorRegistry()
        llm = LLMServerClient(settings.llm)
        await llm.info()
        runner = build_runner(settings, [GeneratorStage(llm, GeneratorMetrics(registry))], None, registry)
        group = f"gen-{unique}"
        loop = WorkerLoop(
            LoopConfig(
                role="generator",
                topics=[topics.name("prompts")],
                dead_letter_topic=topics.name("dead_letter"),
                max_in_flight=4,
                batch_max=1,
                shutdown_timeout_s=10,
            ),
            Consumer(consumer_config(settings.kafka, group)),
            KafkaProducer(settings.kafka, poll_after_produce=False),
            runner.handle,
            build_loop_metrics(registry, role="generator"),
        )
        task = asyncio.create_task(loop.run())
        got = await asyncio.to_thread(_drain, stack.bootstrap_servers, topics.name("responses"), len(prompts))
        dls = await asyncio.to_thread(_drain, stack.bootstrap_servers, topics.name("dead_letter"), 2)
        loop.request_stop()
        await asyncio.wait_for(task, 30)
        await llm.close()

        responses = [decode(v, Response) for v in got]
        assert sorted(r.request_id for r in responses) == sorted(pr.request_id for pr in prompts)
        assert all(r.status == "ok" and r.answer is not None for r in responses)
        assert all(r.usage.completion_tokens > 0 and r.model_id for r in responses)
        assert all("llm_ttft_ms" in r.timings_ms for r in responses)
        letters = [decode(v, DeadLetter) for v in dls]
        assert len(letters) == 2
        assert {d.error_class for d in letters} == {"bad_message"}
        assert any("not JSON" in d.error_message for d in letters)
        assert all(d.source_topic == topics.name("prompts") and d.stage == "generator" for d in letters)

        # committed offsets reached the end of every input partition
        c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": group})
        parts = [TopicPartition(topics.name("prompts"), i) for i in range(3)]
        committed = c.committed(parts, timeout=10)
        ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        c.close()
        assert [tp.offset if tp.offset >= 0 else 0 for tp in committed] == ends

    asyncio.run(run())
