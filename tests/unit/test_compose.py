"""docker-compose.kafka.yml agrees with the settings, topics.yaml and itself (parsed, no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from workers.contracts.topics import load_topics
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())


def _env_names_of_settings() -> set[str]:
    names = {"RAG_DATABASE_URL", "DATABASE_URL"}
    for field, info in Settings.model_fields.items():
        ann = info.annotation
        sub = getattr(ann, "model_fields", None)
        if sub:
            names.update(f"RAG_{field.upper()}__{s.upper()}" for s in sub)
        else:
            names.add(f"RAG_{field.upper()}")
    return names


def test_compose_services_present() -> None:
    services = _compose()["services"]
    for name in ("kafka", "postgres", "tgi", "retriever", "generator", "monitor", "prometheus"):
        assert name in services, name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "gpu" in services["tgi"]["profiles"]
    assert "MODEL_ID" in " ".join(services["tgi"]["command"])


def test_compose_env_names_are_settings() -> None:
    known = _env_names_of_settings()
    for name, svc in _compose()["services"].items():
        for var in svc.get("environment") or {}:
            if var.startswith("RAG_"):
                assert var in known, f"{name}: {var} is not read by workers/settings.py"


def test_compose_topics_and_ports_agree() -> None:
    compose = _compose()
    services = compose["services"]
    topic_names = {t.name for t in load_topics(ROOT / "topics.yaml").topics}
    defaults = Settings().topics
    for svc in ("retriever", "generator", "monitor"):
        env = services[svc]["environment"]
        for key in ("REQUESTS", "PROMPTS", "RESPONSES", "DEAD_LETTER"):
            value = env[f"RAG_TOPICS__{key}"]
            assert value in topic_names
            assert value == getattr(defaults, key.lower())
        # every worker reaches the broker on the advertised listener
        assert env["RAG_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    monitor_port = services["monitor"]["environment"]["RAG_MONITOR__METRICS_PORT"]
    assert f"{monitor_port}:{monitor_port}" in services["monitor"]["ports"]
    scrape = compose["configs"]["prometheus"]["content"]
    assert f"monitor:{monitor_port}" in scrape
    assert f"retriever:{services['retriever']['environment']['RAG_WORKER__METRICS_PORT']}" in scrape
    assert f"generator:{services['generator']['environment']['RAG_WORKER__METRICS_PORT']}" in scrape
    pg_url = services["retriever"]["environment"]["RAG_DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] in pg_url
