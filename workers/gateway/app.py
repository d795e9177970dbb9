"""Gateway wiring: ``ragstream run gateway``, one replica of the OpenAI-compatible HTTP front.

The only module that builds the gateway's clients: the producer of Requests and cancels, the reader of this
replica's reply partition (tokens and responses topics, group-less), the reply router, and the HTTP server (uvicorn
on a socket bound first thing, so a port in use is a one-line error). The routes are :mod:`workers.gateway.http`.
No ML library is imported here or below (import-linter contract in ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Generator

import uvicorn
from prometheus_client import CollectorRegistry

from workers.contracts.errors import ConfigError
from workers.gateway.http import create_app
from workers.gateway.limits import ApiKeys, RateLimiter
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.service import GatewayCore, ReplyRouter
from workers.kafka.admin import check_broker
from workers.kafka.replies import ReplyReader
from workers.kafka.streams import DeliveringProducer
from workers.ports import bind_socket
from workers.settings import Settings

log = logging.getLogger(__name__)


def reply_partition(setting: int | None, hostname: str) -> int:
    """This replica's reply partition: the setting, else the trailing number of the host name (``gateway-7`` → 7,
    a StatefulSet's ordinal), else 0."""
    if setting is not None:
        return setting
    m = re.search(r"(\d+)$", hostname)
    return int(m.group(1)) if m else 0


def api_keys(settings: Settings) -> ApiKeys:
    """The accepted API keys.

    Raises:
        ConfigError: no key hash is set and anonymous access is off, or a hash is malformed.
    """
    g = settings.gateway
    if not g.api_keys_sha256 and not g.allow_anonymous:
        raise ConfigError(
            "no API key configured: set RAG_GATEWAY__API_KEYS_SHA256 to a JSON list of SHA-256 hex digests of the keys "
            "(ragstream gateway-key makes one), or RAG_GATEWAY__ALLOW_ANONYMOUS=true for development"
        )
    try:
        return ApiKeys(g.api_keys_sha256, g.allow_anonymous)
    except ValueError as exc:
        raise ConfigError(f"RAG_GATEWAY__API_KEYS_SHA256: {exc}") from None


class _Server(uvicorn.Server):
    """uvicorn's server that ends a graceful shutdown on SIGTERM/SIGINT by returning, not by re-raising the signal.

    uvicorn (0.29+) re-raises the captured signal after shutdown, so the process dies *by* SIGTERM (exit -15) even
    though every request was finished; a replica, like the workers, exits 0 after a clean stop instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()


async def serve(settings: Settings) -> None:
    """Run one gateway replica until SIGTERM/SIGINT.

    Raises:
        ConfigError: the port is in use, no API key is configured, or the reply partition is not in the topics.
        ServiceUnavailableError: the broker cannot be reached at start-up.
    """
    g = settings.gateway
    sock = bind_socket(g.port, setting="RAG_GATEWAY__PORT", host=g.host)
    keys = api_keys(settings)
    check_broker(settings.kafka)
    partition = reply_partition(g.reply_partition, socket.gethostname())
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    loop = asyncio.get_running_loop()
    tokens_topic = settings.topics.name("tokens")
    router = ReplyRouter(loop, tokens_topic)
    reader = ReplyReader(
        settings.kafka, [tokens_topic, settings.topics.name("responses")], partition, router.on_records
    )
    producer = DeliveringProducer(settings.kafka, g.produce_timeout_s, overrides={"linger.ms": 0})
    try:
        reader.start()
        core = GatewayCore(settings, producer, router, partition)

        async def healthy() -> bool:
            if not reader.alive():
                return False
            try:
                await asyncio.to_thread(producer.producer.client.list_topics, None, 2.0)
            except Exception:  # no broker answer
                return False
            return True

        app = create_app(g, core, keys, RateLimiter(g.rate_limit_per_s, g.rate_limit_burst), metrics, healthy)
        port = sock.getsockname()[1]
        host = "127.0.0.1" if g.host in ("0.0.0.0", "") else g.host
        log.info(
            "gateway on http://%s:%d/v1 (OpenAI API; chat page http://%s:%d/) reply_partition=%d keys=%d%s",
            host, port, host, port, partition, len(keys.hashes), " anonymous allowed" if keys.allow_anonymous else "",
        )  # fmt: skip
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=10
        )
        await _Server(config).serve(sockets=[sock])
    finally:
        reader.stop()
        producer.close()
        sock.close()


__all__ = ["api_keys", "reply_partition", "serve"]
