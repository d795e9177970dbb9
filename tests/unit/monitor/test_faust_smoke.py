"""faust-streaming and mode-streaming import together and build an app (no broker needed).

faust and its helper library mode have broken each other at import time before; this catches a bad pair of
versions before any worker starts.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version


def _requires(dist: str) -> list[Requirement]:
    return [Requirement(r) for r in md.requires(dist) or []]


def test_installed_mode_satisfies_faust_requirement() -> None:
    reqs = [r for r in _requires("faust-streaming") if r.name.lower() in ("mode-streaming", "mode")]
    assert reqs, "faust-streaming declares no dependency on mode-streaming"
    for req in reqs:
        if req.marker is None or req.marker.evaluate():
            assert Version(md.version(req.name)) in req.specifier, f"{req.name} {md.version(req.name)} !~ {req}"


def test_faust_core_dependencies_are_satisfied() -> None:
    """The ``pip check`` part that matters for faust: every unconditional requirement is installed and fits."""
    for req in _requires("faust-streaming"):
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        version = Version(md.version(req.name))
        assert version in req.specifier or not req.specifier, f"{req.name} {version} does not satisfy {req}"


def test_import_and_construct_app(tmp_path: Path) -> None:
    import faust
    import mode

    assert hasattr(mode, "Service")
    app = faust.App(
        "smoke-test",
        broker="kafka://127.0.0.1:1",
        value_serializer="raw",
        topic_disable_leader=True,
        web_enabled=False,
        autodiscover=False,
        datadir=str(tmp_path / "faust"),
        store="memory://",
    )
    topic = app.topic("a.requests", "a.responses", internal=False, value_serializer="raw")
    assert set(topic.topics) == {"a.requests", "a.responses"}
    assert app.conf.id == "smoke-test"

    @app.agent(topic)
    async def noop(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream:
            pass

    assert "noop" in noop.name


def test_monitor_app_builds_without_services(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry
    from psycopg_pool import ConnectionPool

    from workers.monitor.app import create_app
    from workers.settings import KafkaSettings, MonitorSettings, Settings, TopicSettings

    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1,127.0.0.1:2"),
        topics=TopicSettings(prefix="shadow."),
        monitor=MonitorSettings(app_id="monitor-smoke", web_port=0, table="smoke_traces"),
    )
    pool = ConnectionPool("postgresql://nobody@127.0.0.1:1/none", open=False)
    app = create_app(settings, pool=pool, registry=CollectorRegistry(), datadir=tmp_path / "d")
    assert app.conf.id == "monitor-smoke"
    assert app.conf.broker == [
        __import__("yarl").URL("kafka://127.0.0.1:1"),
        __import__("yarl").URL("kafka://127.0.0.1:2"),
    ]
    assert app.conf.consumer_auto_offset_reset == "earliest"
    assert app.conf.web_enabled is False
    (agent,) = app.agents.values()
    assert set(agent.channel.topics) == {
        "shadow.rag.requests",
        "shadow.rag.prompts",
        "shadow.rag.responses",
        "shadow.rag.dead-letter",
    }
    assert agent.channel.internal is False
