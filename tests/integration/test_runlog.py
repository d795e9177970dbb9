"""What a replay records for its shadow (the run log), and how fast it replays (``--rate``), on the real broker.

A shadow that starts before anything was replayed waits (the requests to answer are unknown); once a replay has
delivered its records it records itself, and the shadow learns the distinct request ids to answer. A replay
paced at N records/s, or with the original spacing, takes as long as that says; a burst does not.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from workers.contracts.messages import Request
from workers.contracts.serde import encode
from workers.evaluation import runlog
from workers.evaluation.replay import replay
from workers.evaluation.replay_plan import Pace, build_plan, shadow_prefix
from workers.evaluation.shadow import ReplayedIds, records_in
from workers.kafka.admin import delete_topics, topic_partitions
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings, Settings, TopicSettings


@pytest.fixture
def settings(stack: Any, unique: str) -> Iterator[Settings]:
    """Live topics ``t<unique>.*`` (a one-partition requests topic); they and the runs' topics go afterwards."""
    s = Settings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers), topics=TopicSettings(prefix=f"t{unique}.")
    )
    yield s
    mine = [t for t in topic_partitions(s.kafka) if t.startswith(f"t{unique}.") or f"{unique}." in t]
    delete_topics(s.kafka, mine)


def _produce(settings: Settings, n: int, gap_s: float = 0.0) -> list[Request]:
    reqs = [Request(query=f"question {i}") for i in range(n)]
    with KafkaProducer(settings.kafka) as producer:
        for req in reqs:
            producer.produce(settings.topics.name("requests"), encode(req), str(req.request_id))
            producer.flush(10)
            time.sleep(gap_s)
    return reqs


def test_a_replay_records_what_its_shadow_must_answer(settings: Settings, make_topics: Any, unique: str) -> None:
    make_topics([settings.topics.name("requests")], partitions=3)
    reqs = _produce(settings, 6)
    run = f"w{unique}"
    prefix = shadow_prefix(run)
    waiting = ReplayedIds(settings, prefix)
    assert waiting.refresh() is False and waiting.ids is None  # nothing replayed yet: the shadow waits
    report = replay(settings, build_plan(), run=run)
    assert report.produced == 6 and report.request_ids == 6
    assert waiting.refresh() is True and waiting.ids == {str(r.request_id) for r in reqs}
    (entry,) = runlog.read(settings.kafka, prefix)
    assert (entry.kind, entry.run, entry.produced, entry.request_ids, entry.pace) == ("replay", run, 6, 6, "burst")
    assert entry.source_topic == settings.topics.name("requests")
    # a second replay of the same requests adds records but no request to answer
    replay(settings, build_plan(), run=run)
    assert waiting.refresh() is True and len(waiting.ids or ()) == 6 and waiting.replays == 2
    # a topic created a moment ago has no leader yet for a while: counting its records waits for it
    fresh = f"{prefix}fresh-{unique}"
    make_topics([fresh], partitions=6)
    assert records_in(settings.kafka, fresh) == 0
    assert records_in(settings.kafka, f"{prefix}missing") == 0


def test_a_replay_keeps_the_pace_it_is_given(settings: Settings, make_topics: Any, unique: str) -> None:
    make_topics([settings.topics.name("requests")], partitions=2)
    _produce(settings, 4, gap_s=0.6)  # 1.8 s between the first and the last
    spread = {}
    for name, pace in (("burst", Pace()), ("rate", Pace(per_s=2.0)), ("original", Pace(original=True))):
        run = f"p{name}{unique}"
        report = replay(settings, build_plan(), run=run, pace=pace)
        assert report.produced == 4 and report.pace == str(pace)
        stamps = [r.timestamp_ms or 0 for r in read_topic(settings.kafka, shadow_prefix(run) + "rag.requests")]
        spread[name] = (max(stamps) - min(stamps)) / 1000.0  # seconds between the first and the last replayed
    print(f"seconds between the first and the last of 4 replayed records: {spread}")
    assert spread["burst"] < 0.5
    assert 1.4 <= spread["rate"] < 3.0  # 3 gaps of 0.5 s
    assert 1.6 <= spread["original"] < 3.5  # the 1.8 s of the original spacing
