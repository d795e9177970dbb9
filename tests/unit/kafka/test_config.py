"""librdkafka properties: the user's ``kafka.extra`` wins over our defaults, except the protected few (issue 14 #3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from workers.contracts.errors import ConfigError
from workers.kafka.config import base_config, consumer_config, producer_config, reader_config
from workers.monitor.app import create_app
from workers.settings import KafkaSettings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_the_users_extra_properties_win_over_our_defaults() -> None:
    kafka = KafkaSettings(
        extra={"partition.assignment.strategy": "range", "session.timeout.ms": "7000", "linger.ms": "50"}
    )
    consumer = consumer_config(kafka, "retriever")
    assert consumer["partition.assignment.strategy"] == "range"
    assert consumer["session.timeout.ms"] == "7000"
    assert consumer["enable.auto.offset.store"] is False and consumer["group.id"] == "retriever"
    producer = producer_config(kafka, **{"linger.ms": 0})
    assert producer["linger.ms"] == "50"  # over the settings' linger_ms and the caller's override
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert reader_config(kafka, "read")["session.timeout.ms"] == "7000"


def test_setting_a_protected_property_to_our_own_value_is_accepted() -> None:
    kafka = KafkaSettings(extra={"enable.idempotence": "true", "acks": "-1", "enable.auto.offset.store": "False"})
    assert producer_config(kafka)["enable.idempotence"] == "true"
    assert consumer_config(kafka, "g")["enable.auto.offset.store"] == "False"


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("enable.auto.offset.store", "true", "at-least-once"),
        ("enable.idempotence", "false", "duplicates"),
        ("acks", "1", "in-sync replica"),
        ("group.id", "shared", "consumer group"),
    ],
)
def test_a_protected_property_is_refused_with_its_name_and_why(key: str, value: str, why: str) -> None:
    kafka = KafkaSettings(extra={key: value})
    for build in (lambda: base_config(kafka), lambda: producer_config(kafka), lambda: consumer_config(kafka, "g")):
        with pytest.raises(ConfigError) as err:
            build()
        message = str(err.value)
        assert key in message and repr(value) in message and why in message and "\n" not in message


def test_the_monitor_refuses_a_protected_property_and_takes_the_session_timeout_from_extra() -> None:
    with pytest.raises(ConfigError, match="enable.idempotence"):
        create_app(
            load_settings(kafka=KafkaSettings(extra={"enable.idempotence": "false"})), registry=CollectorRegistry()
        )
    app = create_app(
        load_settings(kafka=KafkaSettings(extra={"session.timeout.ms": "7000"})), registry=CollectorRegistry()
    )
    assert app.conf.broker_session_timeout == 7.0


def test_a_worker_refuses_it_at_start_up_with_one_line(tmp_path: Path) -> None:
    """No broker needed: the check runs before any client is built (exit status 2, one line on stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(
        {
            "RAG_KAFKA__EXTRA": '{"enable.auto.offset.store": "true"}',
            "RAG_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "run", "generator"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error (config): RAG_KAFKA__EXTRA sets enable.auto.offset.store")
