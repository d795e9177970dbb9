"""Wiring of the monitor: a faust-streaming app that writes one trace row per request id (DESIGN.md §3).

One agent reads the four topics (``requests``, ``prompts``, ``responses``, ``dead_letter`` with the
settings' prefix) through one multi-topic channel, so a request, its prompt and its response that arrive
close together are merged and written in one transaction.

Delivery: the agent uses ``Stream.noack_take`` and acks the batch's events only after the batch is committed
to PostgreSQL. (Plain ``take()`` acks the yielded events in a ``finally`` when the generator resumes *or
is closed*, so a batch whose write was interrupted by a stop would be acked without being stored.) faust
commits only acked offsets, so a crash between consuming and writing redelivers the batch, and the
recorder's idempotent upserts make the redelivery a no-op. Nothing escapes the agent: undecodable messages
become error records (errors table + ``bad_messages`` metric), and database failures are retried with
backoff (transient) or isolated per event (a row the database rejects becomes an error record).

Topics: the four main topics are declared ``internal=False``, so faust never creates them (they are created
by ``ragstream topics apply``); :func:`run` checks that they exist before starting. The leader topic is
disabled and there are no tables, so the app creates no topics at all.

Metrics: served by ``prometheus_client.start_http_server`` on ``settings.monitor.metrics_port`` in its own
thread, not by a faust web view: the endpoint then keeps answering when the event loop is busy or stuck
(which is when metrics matter most), and it is the same mechanism and port convention as the other
workers. faust's own web server runs on ``settings.monitor.web_port`` (0 disables it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry, start_http_server
from psycopg_pool import ConnectionPool

from workers.adapters.postgres import open_pool
from workers.adapters.traces import TraceRecorder
from workers.contracts.errors import ConfigError, RagError, RetryableError, ServiceUnavailableError
from workers.kafka.admin import topic_partitions
from workers.kafka.config import check_extra
from workers.kafka.faust_config import broker_urls, faust_credentials
from workers.monitor.metrics import MonitorMetrics, build_metrics
from workers.monitor.sink import MonitorSink, topic_names
from workers.monitor.trace import KafkaCoords
from workers.retry import retry_policies
from workers.settings import Settings

logger = logging.getLogger(__name__)

#: Most events written in one transaction.
DEFAULT_BATCH_MAX = 500
#: Longest wait (seconds) for a batch to fill before it is written.
DEFAULT_BATCH_WITHIN_S = 0.5
#: Interval (seconds) of the timer refreshing the in-flight / past-deadline gauges.
DEFAULT_GAUGE_INTERVAL_S = 5.0


def create_app(
    settings: Settings,
    pool: ConnectionPool | None = None,
    *,
    metrics: MonitorMetrics | None = None,
    registry: CollectorRegistry | None = None,
    topic_partitions: int | None = None,
    batch_max: int = DEFAULT_BATCH_MAX,
    batch_within_s: float = DEFAULT_BATCH_WITHIN_S,
    gauge_interval_s: float = DEFAULT_GAUGE_INTERVAL_S,
    datadir: Path | None = None,
) -> faust.App:
    """Build the monitor's faust app (nothing connects until it starts).

    Args:
        settings: the process's settings (topics and prefix, Kafka, database, ``monitor`` section).
        pool: a psycopg connection pool; default: a new one on ``settings.database_url``. The agent opens it
            if it is not open yet; the caller closes it (:func:`run` does).
        metrics: the metrics bundle; default: :func:`build_metrics` in ``registry``.
        registry: Prometheus registry for the default metrics (default: the global registry).
        topic_partitions: faust's ``topic_partitions`` (partitions of topics faust would create); default:
            the largest partition count of the four topics as in topics.yaml (12). :func:`run` passes the
            counts found on the broker.
        batch_max: most events written per transaction.
        batch_within_s: longest wait (seconds) for a batch to fill.
        gauge_interval_s: interval (seconds) of the in-flight / past-deadline timer.
        datadir: faust's data folder (default: ``<tmp>/ragstream-faust-<app id>``; no tables are kept there).

    Returns:
        The app, with agent ``traces`` and timer ``gauges``. ``app.conf.id`` is ``settings.monitor.app_id``,
        which is also the consumer group.

    Raises:
        ConfigError: the trace table name is invalid, no bootstrap server is given, or ``kafka.extra`` holds
            security settings the monitor cannot use (:func:`workers.kafka.faust_config.faust_credentials`) or
            changes a protected property (:func:`workers.kafka.config.check_extra`).
    """
    mon = settings.monitor
    check_extra(settings.kafka)
    brokers = broker_urls(settings.kafka.bootstrap_servers)
    if not brokers:
        raise ConfigError("no Kafka bootstrap servers configured (RAG_KAFKA__BOOTSTRAP_SERVERS)")
    db_pool = (
        pool
        if pool is not None
        else open_pool(settings.database_url.get_secret_value(), max_size=4, name=f"{mon.app_id}-pool", open_now=False)
    )
    recorder = TraceRecorder(db_pool, table=mon.table)
    bundle = metrics if metrics is not None else build_metrics(registry)
    names = topic_names(settings)
    sink = MonitorSink(recorder, bundle, names, retry=retry_policies(settings).database)
    # The user's librdkafka session.timeout.ms (kafka.extra) wins here too, as for the other workers.
    session_ms = float(settings.kafka.extra.get("session.timeout.ms", settings.kafka.session_timeout_ms))

    app = faust.App(
        mon.app_id,
        broker=brokers,
        broker_credentials=faust_credentials(settings.kafka.extra),
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session_ms / 1000.0,
        broker_heartbeat_interval=min(3.0, session_ms / 3000.0),
        topic_partitions=topic_partitions or 12,
        topic_disable_leader=True,
        web_enabled=mon.web_port > 0,
        web_port=mon.web_port if mon.web_port > 0 else 6066,
        web_bind="127.0.0.1",
        datadir=str(datadir or Path(tempfile.gettempdir()) / f"ragstream-faust-{mon.app_id}"),
        autodiscover=False,
        store="memory://",
    )
    channel = app.topic(*names, internal=False, value_serializer="raw", key_serializer="raw")
    ready = asyncio.Event()

    async def _prepare() -> None:
        def open_and_create() -> None:
            try:
                if db_pool.closed:
                    db_pool.open(wait=True, timeout=30.0)
                recorder.ensure_schema()
            except Exception as exc:  # noqa: BLE001 - any failure here means "not ready yet"
                raise RetryableError(f"database not ready: {exc}") from exc

        def on_retry(exc: BaseException, attempt: int, sleep_s: float) -> None:
            logger.warning("database not ready, retrying in %.1f s (attempt %d): %s", sleep_s, attempt, exc)

        await sink.retry.call(lambda: asyncio.to_thread(open_and_create), on_retry=on_retry)
        ready.set()

    async def _write(messages: list[tuple[KafkaCoords, bytes | None]]) -> None:
        updates, errors = sink.assemble_batch(messages)
        result = await sink.write_retrying(updates, errors, events=len(messages))
        logger.debug(
            "batch written events=%d rows_changed=%d errors_new=%d",
            len(messages),
            result.rows_changed,
            len(result.errors_inserted),
        )

    @app.agent(channel, name=f"{mon.app_id}.traces")
    async def traces(stream: faust.StreamT[Any]) -> None:
        try:
            await _prepare()
            # StreamT (the protocol) lacks noack_take; the concrete faust.Stream has it.
            async for events in stream.noack_take(batch_max, within=batch_within_s):  # type: ignore[attr-defined]
                batch: list[tuple[KafkaCoords, bytes | None]] = []
                for event in events:
                    msg = event.message
                    batch.append((KafkaCoords(msg.topic, msg.partition, msg.offset), msg.value))
                await _write(batch)
                # Only now may faust commit these offsets (ack = safe to commit).
                for event in events:
                    await stream.ack(event)
        except RagError as exc:  # the database stayed away past the retry bound: stop, unacked events stay
            logger.critical("monitor stopping: trace table unavailable past the retry bound: %s", exc)
            await app.crash(exc)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode types the sender positional-only
    async def _on_assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # The ready marker devstack.pipeline waits for.
        logger.info("monitor started: partitions assigned app_id=%s count=%d", mon.app_id, len(args[0]) if args else 0)

    @app.timer(interval=gauge_interval_s, name=f"{mon.app_id}.gauges")
    async def gauges() -> None:
        if not ready.is_set():
            return
        try:
            overdue = await asyncio.to_thread(sink.refresh_gauges)
        except Exception as exc:  # noqa: BLE001 - a failed refresh must not stop the timer
            logger.warning("gauge refresh failed: %s", exc)
            return
        if overdue:
            logger.warning("requests past their deadline without an answer count=%d", overdue)

    return app


def check_topics(settings: Settings, timeout_s: float = 10.0) -> dict[str, int]:
    """Check that the four topics exist (the monitor never creates them) and return their partition counts.

    Args:
        settings: Kafka connection and topic names.
        timeout_s: how long to wait for the broker's metadata (seconds).

    Returns:
        Full topic name → partition count.

    Raises:
        ServiceUnavailableError: the broker did not answer.
        ConfigError: a topic is missing (run ``ragstream topics apply``).
    """
    names = topic_names(settings)
    found = topic_partitions(settings.kafka, names, timeout_s=timeout_s)
    missing = [name for name in names if name not in found]
    if missing:
        raise ConfigError(f"topics missing: {', '.join(missing)} (create them with 'ragstream topics apply')")
    return found


def run(settings: Settings) -> None:
    """Run the monitor in this process until SIGTERM or SIGINT, then stop cleanly.

    Starts the Prometheus endpoint on ``settings.monitor.metrics_port`` (0: none), checks the topics, runs
    the faust worker (which handles the signals: the agent stops, unacked batches stay uncommitted), then
    closes the metrics server and the database pool.

    Args:
        settings: the process's settings.

    Raises:
        ConfigError: a topic is missing or a setting is invalid.
        ServiceUnavailableError: the broker is not reachable.
        SystemExit: the faust worker ended with a non-zero exit code.
    """
    partitions = check_topics(settings)
    logger.info("monitor starting app_id=%s topics=%s", settings.monitor.app_id, partitions)
    pool = open_pool(
        settings.database_url.get_secret_value(), max_size=4, name=f"{settings.monitor.app_id}-pool", open_now=False
    )
    app = create_app(settings, pool=pool, topic_partitions=max(partitions.values()))
    server: Any = None
    if settings.monitor.metrics_port > 0:
        server, _thread = start_http_server(settings.monitor.metrics_port)
        logger.info("metrics on http://0.0.0.0:%d/metrics", settings.monitor.metrics_port)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        quiet=True,
        redirect_stdouts=False,
    )
    code = 0
    try:
        # The agent opens the pool (in a thread, retrying) so that start-up does not block on the database.
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        pool.close()
        logger.info("monitor stopped app_id=%s exit_code=%d", settings.monitor.app_id, code)
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m workers.monitor.app``: settings from the environment, logging, :func:`run`."""
    from workers.logs import configure_logging
    from workers.settings import load_settings

    del argv
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        run(settings)
    except (ConfigError, ServiceUnavailableError) as exc:
        logger.error("%s", exc)
        sys.exit(2)


if __name__ == "__main__":
    main()
