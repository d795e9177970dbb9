"""topics.yaml parses, defaults apply, and partition counts allow several replicas per worker."""

from __future__ import annotations

from pathlib import Path

from workers.contracts.topics import load_topics
from workers.settings import TopicSettings

ROOT = Path(__file__).resolve().parents[3]


def test_topics_yaml_has_the_four_topics_with_defaults() -> None:
    spec = load_topics(ROOT / "topics.yaml")
    names = {t.name: t for t in spec.topics}
    d = TopicSettings()
    for n in (d.requests, d.prompts, d.responses, d.dead_letter):
        assert n in names
        assert names[n].config["cleanup.policy"] == "delete"  # from defaults
    for n in (d.requests, d.prompts, d.responses):
        assert names[n].partitions >= 4  # several replicas per worker
    assert set(spec.consumer_groups) == {"retriever", "generator", "monitor"}


def test_prefix_renames_topics_and_groups() -> None:
    spec = load_topics(ROOT / "topics.yaml").with_prefix("rag.eval.run1.")
    assert all(t.name.startswith("rag.eval.run1.") for t in spec.topics)
    assert all(n.startswith("rag.eval.run1.") for ns in spec.consumer_groups.values() for n in ns)
