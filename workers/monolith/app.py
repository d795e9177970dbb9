"""Monolith wiring: ``ragstream run monolith``, every stage in one process, from the same modules as the split shape.

One consumer group on the requests topic runs the chain retriever → generator in memory (no prompts-topic
hop) through the same stream runner as the split workers, and records every event (request, prompt, response,
dead letters) with the monitor stage in-process, so the trace rows are those the split shape's monitor writes.
The LLM is the same adapter as the generator's: the HTTP server at ``RAG_LLM__URL`` (default), or an engine hosted
in this process (``RAG_LLM__ENGINE=transformers|simulated``).

Switching shapes is configuration only (same settings, topics and tables):

* the requests loop joins the **retriever's** consumer group (``<prefix>retriever``), so a split retriever started
  after the monolith continues from the offsets the monolith committed, and the other way round;
* the answers go to the same answer store (``rag_answers``): a request the monolith answered but had not committed
  when it stopped is re-emitted by the split generator, never generated again;
* with ``monolith.drain_prompts`` (default) a second loop joins the **generator's** group on the prompts topic, so
  prompts a split retriever left behind are answered when a deployment switches back to the monolith.

The promises are the workers': an input offset is stored only after its outputs are delivered; dead letters the
same; a finished answer is never regenerated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import CollectorRegistry

from workers.adapters.interfaces import LLMTokenCounter
from workers.adapters.postgres import open_pool
from workers.adapters.traces import TraceRecorder
from workers.contracts.messages import Request
from workers.generator import app as generator_app
from workers.generator.metrics import GeneratorMetrics
from workers.kafka.admin import check_broker, topic_partitions
from workers.kafka.loop import WorkerLoop, build_worker_loop
from workers.kafka.metrics import build_loop_metrics
from workers.monitor.metrics import build_metrics
from workers.monitor.sink import MonitorSink, topic_names
from workers.ports import start_metrics_server
from workers.retriever import app as retriever_app
from workers.retry import retry_policies
from workers.settings import Settings

log = logging.getLogger(__name__)

ROLE = "monolith"


async def open_monitor_stage(
    settings: Settings, registry: CollectorRegistry, resources: contextlib.ExitStack
) -> MonitorSink:
    """The monitor stage in this process: the trace table (created if missing) and the monitor's metrics.

    Raises:
        ServiceUnavailableError: PostgreSQL cannot be reached.
    """
    pool = open_pool(settings.database_url.get_secret_value(), max_size=2, name=f"{ROLE}-traces")
    resources.callback(pool.close)
    recorder = TraceRecorder(pool, table=settings.monitor.table)
    await asyncio.to_thread(recorder.ensure_schema)
    return MonitorSink(
        recorder, build_metrics(registry), topic_names(settings), retry=retry_policies(settings).database
    )


async def serve(settings: Settings) -> None:
    """Run the monolith until SIGTERM/SIGINT.

    Raises:
        ConfigError: the metrics port is in use (checked first, before the broker and the models).
        ServiceUnavailableError: the broker, PostgreSQL or the LLM server cannot be reached at start-up.
        DimensionMismatchError: the vector table's dimension differs from the embedding model's.
    """
    registry = CollectorRegistry()
    server = start_metrics_server(settings.worker.metrics_port, registry, setting="RAG_WORKER__METRICS_PORT")
    check_broker(settings.kafka)
    gen_metrics = GeneratorMetrics(registry)
    with contextlib.ExitStack() as sync_resources:
        if server is not None:
            sync_resources.callback(server.close)
        async with contextlib.AsyncExitStack() as resources:
            llm = generator_app.build_llm(settings, gen_metrics)
            resources.push_async_callback(llm.close)
            info = await llm.info()
            log.info("LLM model_id=%s max_total_tokens=%s api=%s", info.model_id, info.max_total_tokens, llm.api)
            # The LLM's own limits and token counting: the in-process engine's, or the server's /info and /tokenize.
            counter = llm if isinstance(llm, LLMTokenCounter) else None
            retriever = retriever_app.build_stage(settings, registry, sync_resources, limits=info, counter=counter)
            generator = generator_app.build_stage(settings, llm, gen_metrics, resources)
            answers = await generator_app.open_answer_store(settings, resources)
            monitor = await open_monitor_stage(settings, registry, sync_resources)
            loop_metrics = build_loop_metrics(registry)
            main = generator_app.build_runner(
                settings,
                [retriever, generator],
                answers,
                registry,
                input_model=Request,
                recorder=monitor,
                prefix="ragstream_monolith",
            )
            loops: list[WorkerLoop] = [
                build_worker_loop(
                    settings,
                    role=ROLE,
                    topics=[settings.topics.name("requests")],
                    handler=main.handle,
                    max_in_flight=settings.worker.max_in_flight
                    or max(settings.llm.max_in_flight, 2 * settings.worker.batch_max),
                    batch_max=settings.worker.batch_max,
                    group=settings.worker.group_id or settings.topics.prefix + "retriever",
                    metrics=loop_metrics,
                )
            ]
            main.stopping = loops[0].is_stopping
            prompts_topic = settings.topics.name("prompts")
            if settings.monolith.drain_prompts and topic_partitions(settings.kafka, [prompts_topic]):
                drain = generator_app.build_runner(
                    settings, [generator], answers, registry, recorder=monitor, prefix="ragstream_monolith_prompts"
                )
                loops.append(
                    build_worker_loop(
                        settings,
                        role=f"{ROLE}-prompts",
                        topics=[prompts_topic],
                        handler=drain.handle,
                        max_in_flight=max(settings.worker.max_in_flight, settings.llm.max_in_flight),
                        batch_max=1,
                        group=settings.topics.prefix + "generator",
                        metrics=loop_metrics,
                    )
                )
                drain.stopping = loops[1].is_stopping
            event_loop = asyncio.get_running_loop()

            def stop_all() -> None:
                for lp in loops:
                    lp.request_stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                event_loop.add_signal_handler(sig, stop_all)
            log.info("monolith ready loops=%s", ", ".join(lp.config.role for lp in loops))
            tasks = [asyncio.create_task(lp.run()) for lp in loops]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            stop_all()  # one loop ended (stop requested, or a fatal error): end the others too
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]


__all__ = ["open_monitor_stage", "serve"]
