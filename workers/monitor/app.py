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
workers. faust's own web server runs on ``settings.monitor.web_port`` (0, the default, disables it). Both ports
are bound or checked before anything connects (:mod:`workers.ports`): a port in use is a one-line error, and
``auto`` picks a free one, so several monitors can run on one host.

Broker restarts: the monitor waits for the broker at start (the topic check is retried with backoff) and, while
running, a timer probes the broker; aiokafka reconnects by itself. Only after ``monitor.broker_wait_s`` seconds
without an answer does the monitor stop (cleanly, as on SIGTERM) and exit with status 2. Consumer metadata is
refreshed every 10 s (as librdkafka's), so a group joined while the broker was still loading its topics
rebalances onto them within seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from workers.adapters.postgres import open_pool
from workers.adapters.traces import TraceRecorder
from workers.contracts.errors import ConfigError, RagError, RetryableError, ServiceUnavailableError
from workers.kafka.admin import check_broker, topic_partitions
from workers.kafka.config import check_extra
from workers.kafka.faust_config import broker_urls, faust_credentials
from workers.monitor.metrics import MonitorMetrics, build_metrics
from workers.monitor.sink import MonitorSink, topic_names
from workers.monitor.trace import KafkaCoords
from workers.ports import resolve_port, start_metrics_server
from workers.retry import retry_policies
from workers.settings import KafkaSettings, Settings

logger = logging.getLogger(__name__)

#: Most events written in one transaction.
DEFAULT_BATCH_MAX = 500
#: Longest wait (seconds) for a batch to fill before it is written.
DEFAULT_BATCH_WITHIN_S = 0.5
#: Interval (seconds) of the timer refreshing the in-flight / past-deadline gauges.
DEFAULT_GAUGE_INTERVAL_S = 5.0
#: Longest wait (seconds) between two tries to reach the broker.
BROKER_BACKOFF_MAX_S = 10.0
#: Seconds a monitor stopping because the broker is gone may take to stop cleanly; then it exits at once (status
#: 2). faust's consumer thread waits out its own stop timeout (about a minute) when the broker is away, and with
#: no broker there is nothing left to commit: unacked events are simply read again later.
BROKER_GONE_EXIT_S = 15.0


def _gone(kafka: KafkaSettings, bound_s: float, why: object) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"Kafka broker at {kafka.bootstrap_servers!r} not reachable for {bound_s:.0f} s "
        f"(RAG_MONITOR__BROKER_WAIT_S); the monitor stops: {why}"
    )


@dataclass
class BrokerWatch:
    """Whether the broker still answers, probed from a faust timer; past ``bound_s`` without an answer it
    records why (``gone``) and the monitor stops (:meth:`stop`).

    Attributes:
        kafka: the connection settings.
        bound_s: seconds without an answer before the monitor stops.
        last_ok: monotonic time of the last answer.
        gone: set once the bound has passed.
    """

    kafka: KafkaSettings
    bound_s: float
    clock: Callable[[], float] = time.monotonic
    last_ok: float = field(default_factory=time.monotonic)
    gone: ServiceUnavailableError | None = None

    @property
    def interval_s(self) -> float:
        """Seconds between two probes."""
        return min(5.0, max(0.5, self.bound_s / 5.0))

    def probe(self) -> bool:
        """One metadata request (blocking, at most ``interval_s``); False once the bound has passed."""
        try:
            check_broker(self.kafka, timeout_s=0.8 * self.interval_s)
        except ServiceUnavailableError as exc:
            away = self.clock() - self.last_ok
            logger.warning("Kafka broker not answering for %.0f s (stopping after %.0f s)", away, self.bound_s)
            if away >= self.bound_s and self.gone is None:
                self.gone = _gone(self.kafka, self.bound_s, exc)
            return self.gone is None
        self.last_ok = self.clock()
        return True

    def stop(self) -> None:
        """Stop the worker: SIGTERM to this process (faust's clean stop: unacked events stay uncommitted), and
        exit with status 2 regardless after :data:`BROKER_GONE_EXIT_S` seconds."""
        logger.critical("%s", self.gone)

        gone = self.gone

        def hard_exit() -> None:
            logger.critical("monitor did not stop within %.0f s of the broker bound; exiting", BROKER_GONE_EXIT_S)
            logging.shutdown()
            if gone is not None:  # the line the CLI prints for a RagError
                sys.stderr.write(f"error ({gone.error_class}): {' '.join(str(gone).split())}\n")
                sys.stderr.flush()
            os._exit(2)

        timer = threading.Timer(BROKER_GONE_EXIT_S, hard_exit)
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)


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
    broker_watch: BrokerWatch | None = None,
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
        broker_watch: probes the broker from a timer and stops the worker past its bound (:func:`run` passes
            one); ``None``: no probe.

    Returns:
        The app, with agent ``traces`` and timer ``gauges``. ``app.conf.id`` is ``settings.monitor.app_id``,
        which is also the consumer group.

    Raises:
        ConfigError: the trace table name is invalid, no bootstrap server is given, or ``kafka.extra`` holds
            security settings the monitor cannot use (:func:`workers.kafka.faust_config.faust_credentials`) or
            changes a protected property (:func:`workers.kafka.config.check_extra`), or faust's web port
            (``monitor.web_port``) is in use.
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
    web_port = resolve_port(mon.web_port, setting="RAG_MONITOR__WEB_PORT")

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
        # As librdkafka's topic.metadata.refresh.interval.ms in workers/kafka/config.py: a member that joined while
        # a restarted broker did not list the topics yet sees them within seconds and the group rebalances.
        consumer_metadata_max_age_ms=10_000,
        web_enabled=web_port > 0,
        web_port=web_port or 6066,
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

    if broker_watch is not None:
        watch = broker_watch
        stopping: list[bool] = []

        @app.timer(interval=watch.interval_s, name=f"{mon.app_id}.broker")
        async def broker() -> None:
            if not await asyncio.to_thread(watch.probe) and not stopping:
                stopping.append(True)
                watch.stop()

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


def wait_for_topics(settings: Settings, sleep: Callable[[float], None] = time.sleep) -> dict[str, int]:
    """:func:`check_topics`, retried with backoff (1 s doubling up to 10 s) while the broker does not answer, for
    at most ``monitor.broker_wait_s`` seconds: a monitor (re)started during a broker restart waits for it.

    Raises:
        ServiceUnavailableError: no answer within ``monitor.broker_wait_s`` seconds.
        ConfigError: a topic is missing (at once: waiting does not create it).
    """
    bound = settings.monitor.broker_wait_s
    t0 = time.monotonic()
    backoff = 1.0
    while True:
        left = bound - (time.monotonic() - t0)
        try:
            return check_topics(settings, timeout_s=max(1.0, min(5.0, left)))
        except ServiceUnavailableError as exc:
            left = bound - (time.monotonic() - t0)
            if left <= 0:
                raise _gone(settings.kafka, bound, exc) from None
            wait = min(backoff, left)
            logger.warning("Kafka broker not reachable, trying again in %.0f s (gives up in %.0f s)", wait, left)
            sleep(wait)
            backoff = min(backoff * 2.0, BROKER_BACKOFF_MAX_S)


def run(settings: Settings) -> None:
    """Run the monitor in this process until SIGTERM or SIGINT, then stop cleanly.

    Starts the Prometheus endpoint on ``settings.monitor.metrics_port`` (0: none; checked before anything
    connects), waits for the broker and checks the topics (:func:`wait_for_topics`), runs the faust worker (which
    handles the signals: the agent stops, unacked batches stay uncommitted) with a :class:`BrokerWatch`, then
    closes the metrics server and the database pool.

    Args:
        settings: the process's settings.

    Raises:
        ConfigError: a port is in use, a topic is missing or a setting is invalid.
        ServiceUnavailableError: the broker did not answer for ``monitor.broker_wait_s`` seconds (at start, or
            while running: the worker then stopped cleanly first).
        SystemExit: the faust worker ended with a non-zero exit code.
    """
    mon = settings.monitor
    server = start_metrics_server(mon.metrics_port, setting="RAG_MONITOR__METRICS_PORT")
    try:
        check_extra(settings.kafka)
        resolve_port(mon.web_port, setting="RAG_MONITOR__WEB_PORT")  # before waiting for the broker, too
        partitions = wait_for_topics(settings)
    except BaseException:
        if server is not None:
            server.close()
        raise
    logger.info("monitor starting app_id=%s topics=%s", mon.app_id, partitions)
    pool = open_pool(settings.database_url.get_secret_value(), max_size=4, name=f"{mon.app_id}-pool", open_now=False)
    watch = BrokerWatch(settings.kafka, mon.broker_wait_s)
    try:
        app = create_app(settings, pool=pool, topic_partitions=max(partitions.values()), broker_watch=watch)
    except BaseException:
        pool.close()
        if server is not None:
            server.close()
        raise
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
            server.close()
        pool.close()
        logger.info("monitor stopped app_id=%s exit_code=%d", mon.app_id, code)
    if watch.gone is not None:
        raise watch.gone
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
