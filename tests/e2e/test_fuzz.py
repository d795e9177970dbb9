"""Fuzz: 10,000 random or mutated messages on every input topic; no worker crashes, nothing dropped silently.

One replica of each worker runs on topics of its own. The test produces random bytes, truncated and mutated
JSON of each wire model, wrong types, nulls, missing fields, huge strings, wrong ``schema_version``, invalid
UTF-8, empty values, tombstones, deeply nested JSON and other models' messages to the requests, prompts,
responses and dead-letter topics, with random keys and garbage headers. Every message is checked locally to
be invalid for its topic's model before it is sent. Then:

* every worker process is still alive;
* the dead-letter topic holds exactly one dead letter per bad message of the requests and prompts topics
  (matched by source topic, partition and offset), with an error class and message;
* the monitor's errors table holds one ``bad_message`` record per bad message of every topic;
* a valid request sent afterwards is answered with status ok;
* the workers stop cleanly (exit status 0) on SIGTERM.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message
from psycopg import sql
from pydantic import BaseModel

from devstack.pipeline import Pipeline
from workers.client import RagClient
from workers.contracts.messages import (
    ChatMessage,
    DeadLetter,
    ErrorInfo,
    Passage,
    Prompt,
    Request,
    Response,
    Source,
)
from workers.contracts.serde import decode
from workers.evaluation.dlq import DeadLetterRecord, read_dead_letters
from workers.kafka.producer import KafkaProducer
from workers.settings import Settings

#: Messages produced per logical topic (10,000 in all).
SHARE = {"requests": 3000, "prompts": 3000, "responses": 2000, "dead_letter": 2000}
MODELS: dict[str, type[BaseModel]] = {
    "requests": Request,
    "prompts": Prompt,
    "responses": Response,
    "dead_letter": DeadLetter,
}
SEED = 20240611
Coord = tuple[str, int, int]


def _samples() -> dict[str, dict[str, Any]]:
    """One valid message of each model, as JSON-ready dicts (the mutations start from these)."""
    req = Request(query="What does the pass statement do?", top_k=3, filters={"document_id": ["pass"]})
    prompt = Prompt(
        request_id=req.request_id,
        request=req,
        passages=[Passage(chunk_id="pass#0", document_id="pass", score=0.8, text="pass is a null operation", rank=0)],
        messages=[ChatMessage(role="system", content="Answer."), ChatMessage(role="user", content=req.query)],
        template_id="default",
        template_hash="abc",
        prompt_tokens=42,
        max_new_tokens=16,
    )
    resp = Response(
        request_id=req.request_id,
        answer="It does nothing.",
        sources=[Source(document_id="pass", chunk_id="pass#0", score=0.8)],
        timings_ms={"end_to_end_ms": 12.5},
    )
    dl = DeadLetter(
        request_id=req.request_id,
        source_topic="rag.requests",
        partition=0,
        offset=7,
        key=None,
        value_b64="e30=",
        error_class="bad_message",
        error_message="value is not JSON",
        stage="retriever",
    )
    err = Response(
        request_id=req.request_id,
        status="error",
        answer=None,
        error=ErrorInfo(error_class="validation", message="too long", stage="generator"),
    )
    return {
        "requests": req.model_dump(mode="json"),
        "prompts": prompt.model_dump(mode="json"),
        "responses": resp.model_dump(mode="json"),
        "dead_letter": dl.model_dump(mode="json"),
        "error_response": err.model_dump(mode="json"),
    }


def _wrong_value(rng: random.Random) -> Any:
    return rng.choice(
        [None, 0, -1, 2**70, 1.5e308, True, "", "x" * rng.randint(1, 50), [], [1, "a"], {}, {"a": {"b": None}}]
    )


def _huge(rng: random.Random) -> str:
    return "".join(rng.choices("abcdefghij ", k=rng.randint(50_000, 150_000)))


class Fuzzer:
    """Makes invalid values for a topic's model from a valid sample (seeded, reproducible)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.samples = _samples()
        self.kinds: list[Callable[[str], bytes | None]] = [
            self.random_bytes,
            self.truncated,
            self.byte_flips,
            self.wrong_type,
            self.null_field,
            self.missing_field,
            self.wrong_schema_version,
            self.huge_string,
            self.invalid_utf8,
            self.empty,
            self.tombstone,
            self.deep_nesting,
            self.json_scalar,
            self.other_model,
            self.bad_datetime,
            self.nested_garbage,
        ]

    def sample(self, topic: str) -> dict[str, Any]:
        """A deep copy of the topic's valid sample."""
        out: dict[str, Any] = json.loads(json.dumps(self.samples[topic]))
        out["request_id"] = str(uuid.uuid4())
        return out

    def dumps(self, obj: Any) -> bytes:
        """JSON bytes (NaN/Infinity allowed, as a buggy producer could send)."""
        return json.dumps(obj).encode()

    def random_bytes(self, topic: str) -> bytes | None:
        return self.rng.randbytes(self.rng.randint(1, 400))

    def truncated(self, topic: str) -> bytes | None:
        raw = self.dumps(self.sample(topic))
        return raw[: self.rng.randint(1, len(raw) - 1)]

    def byte_flips(self, topic: str) -> bytes | None:
        raw = bytearray(self.dumps(self.sample(topic)))
        for _ in range(self.rng.randint(1, 6)):
            raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
        return bytes(raw)

    def wrong_type(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        for key in self.rng.sample(sorted(obj), k=min(len(obj), self.rng.randint(1, 3))):
            obj[key] = _wrong_value(self.rng)
        return self.dumps(obj)

    def null_field(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        obj[self.rng.choice(sorted(obj))] = None
        return self.dumps(obj)

    def missing_field(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        for key in self.rng.sample(sorted(obj), k=min(len(obj), self.rng.randint(1, 4))):
            obj.pop(key)
        return self.dumps(obj)

    def wrong_schema_version(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        obj["schema_version"] = self.rng.choice([0, 2, -1, "1", "v1", None, 1.5, 10**30])
        return self.dumps(obj)

    def huge_string(self, topic: str) -> bytes | None:
        if self.rng.random() < 0.8:  # rare: ~100 huge messages of 50-150 KB in 10,000
            return self.truncated(topic)
        obj = self.sample(topic)
        strings = [k for k, v in obj.items() if isinstance(v, str)] or sorted(obj)
        obj[self.rng.choice(strings)] = _huge(self.rng)
        return self.dumps(obj)

    def invalid_utf8(self, topic: str) -> bytes | None:
        raw = self.dumps(self.sample(topic))
        at = self.rng.randrange(len(raw))
        return raw[:at] + self.rng.choice([b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"]) + raw[at:]

    def empty(self, topic: str) -> bytes | None:
        return b""

    def tombstone(self, topic: str) -> bytes | None:
        return None

    def deep_nesting(self, topic: str) -> bytes | None:
        depth = self.rng.choice([300, 2_000, 20_000])
        inner = b"[" * depth + b"]" * depth
        if self.rng.random() < 0.5:
            return inner
        return b'{"request_id": "' + str(uuid.uuid4()).encode() + b'", "query": ' + inner + b"}"

    def json_scalar(self, topic: str) -> bytes | None:
        return self.rng.choice([b"null", b"0", b"-1e999", b'"text"', b"[]", b"{}", b"true", b"NaN", b"  "])

    def other_model(self, topic: str) -> bytes | None:
        other = self.rng.choice([t for t in (*MODELS, "error_response") if t != topic])
        return self.dumps(self.sample(other))

    def bad_datetime(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        obj["created_at"] = self.rng.choice(["yesterday", "2024-13-45T99:00:00Z", "2024-01-01T00:00:00", 1e20, ""])
        if topic == "requests":
            obj["deadline"] = self.rng.choice(["2024-01-01T00:00:00", "soon", -5])
        return self.dumps(obj)

    def nested_garbage(self, topic: str) -> bytes | None:
        obj = self.sample(topic)
        key = self.rng.choice(sorted(obj))
        obj[key] = {"$ref": "#", "\u0000": ["\ud800".encode("utf-8", "surrogatepass").decode("latin-1")], "n": 1e308}
        return self.dumps(obj)

    def make(self, topic: str) -> tuple[str, bytes | None]:
        """An invalid value for ``topic``'s model: ``(mutation kind, value)``."""
        model = MODELS[topic]
        for _ in range(20):
            fn = self.rng.choice(self.kinds)
            value = fn(topic)
            if not _is_valid(value, model):
                return fn.__name__, value
        return "random_bytes", self.random_bytes(topic)

    def key(self) -> bytes | str | None:
        """A random key: none, random bytes, text."""
        r = self.rng.random()
        if r < 0.3:
            return None
        if r < 0.6:
            return self.rng.randbytes(self.rng.randint(0, 40))
        return str(uuid.uuid4())

    def headers(self) -> list[tuple[str, Any]]:
        """Random headers, sometimes garbage ``request_id``/``deadline``/``traceparent`` values."""
        out: list[tuple[str, Any]] = []
        if self.rng.random() < 0.5:
            out.append(("request_id", self.rng.choice([str(uuid.uuid4()), "not-a-uuid", b"\xff\xfe", ""])))
        if self.rng.random() < 0.3:
            out.append(("deadline", self.rng.choice(["2000-01-01T00:00:00+00:00", "later", b"\x80", "2099-01-01"])))
        if self.rng.random() < 0.2:
            out.append(("traceparent", self.rng.randbytes(20)))
        if self.rng.random() < 0.1:
            out.append(("x-none", None))
        return out


def _is_valid(value: bytes | None, model: type[BaseModel]) -> bool:
    try:
        decode(value, model)
    except Exception:  # noqa: BLE001 - any failure means "invalid", which is what we want
        return False
    return True


def _dead_letter_coords(settings: Settings) -> Counter[Coord]:
    out: Counter[Coord] = Counter()
    for rec in read_dead_letters(settings):
        if isinstance(rec, DeadLetterRecord) and rec.letter.error_class and rec.letter.error_message:
            out[(rec.letter.source_topic, rec.letter.partition, rec.letter.offset)] += 1
    return out


def _monitor_bad_coords(database_url: str, table: str) -> set[Coord]:
    q = sql.SQL(
        "SELECT source_topic, source_partition, source_offset FROM {} WHERE stage = 'monitor' AND kind = 'bad_message'"
    ).format(sql.Identifier(f"{table}_errors"))
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            return {(str(t), int(p), int(o)) for t, p, o in conn.execute(q).fetchall()}
    except psycopg.errors.UndefinedTable:
        return set()


def _assert_alive(pipeline: Pipeline) -> None:
    for wp in pipeline.procs:
        if wp.proc.poll() is not None:
            tail = "\n".join(wp.log_text().splitlines()[-30:])
            raise AssertionError(f"{wp.worker}-{wp.index} died with exit status {wp.proc.returncode}:\n{tail}")


def test_fuzz_every_input_topic(
    stack: Any, pipeline_env: dict[str, str], pipeline_settings: Settings, tmp_path: Path
) -> None:
    settings = pipeline_settings
    rng = random.Random(SEED)
    fuzzer = Fuzzer(rng)
    pipeline = Pipeline(env=pipeline_env, log_dir=tmp_path / "logs")
    pipeline.start()
    codes: dict[str, int | None] = {}
    try:
        pipeline.wait_ready(timeout_s=240)
        # -- produce 10,000 invalid messages, remembering where each landed
        sent: dict[Coord, str] = {}
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(str(err))
                return
            sent[(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)] = msg.topic() or ""

        producer = KafkaProducer(settings.kafka, overrides={"linger.ms": 20, "message.max.bytes": 2_000_000})
        kinds: Counter[str] = Counter()
        t0 = time.monotonic()
        for topic, n in SHARE.items():
            name = settings.topics.name(topic)  # type: ignore[arg-type]  # literal keys of SHARE
            for _ in range(n):
                kind, value = fuzzer.make(topic)
                kinds[kind] += 1
                headers = [*fuzzer.headers(), ("fuzz_kind", kind)]
                producer.produce(name, value, fuzzer.key(), headers, on_delivery)
        assert producer.flush(60) == 0
        assert not failures, failures[:5]
        assert len(sent) == sum(SHARE.values())
        print(
            f"\nproduced {len(sent)} bad messages in {time.monotonic() - t0:.1f}s; kinds: {dict(sorted(kinds.items()))}"
        )

        # -- one dead letter per bad message of the requests and prompts topics
        worker_topics = {settings.topics.name("requests"), settings.topics.name("prompts")}
        expected_dl = {c for c in sent if c[0] in worker_topics}
        letters: Counter[Coord] = Counter()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _assert_alive(pipeline)
            letters = _dead_letter_coords(settings)
            if expected_dl <= set(letters):
                break
            time.sleep(2)
        missing_dl = expected_dl - set(letters)
        assert not missing_dl, f"{len(missing_dl)} bad messages without a dead letter, e.g. {sorted(missing_dl)[:5]}"
        doubled = {c: n for c, n in letters.items() if c in expected_dl and n != 1}
        assert not doubled, f"bad messages with more than one dead letter: {list(doubled.items())[:5]}"
        print(f"dead letters: {len(expected_dl)} for {len(expected_dl)} bad messages on requests and prompts")

        # -- the monitor records every bad message it read (all four topics)
        table = pipeline_env["RAG_MONITOR__TABLE"]
        recorded: set[Coord] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _assert_alive(pipeline)
            recorded = _monitor_bad_coords(stack.database_url, table)
            if set(sent) <= recorded:
                break
            time.sleep(2)
        by_topic = Counter(c[0] for c in set(sent) - recorded)
        assert not by_topic, f"bad messages the monitor did not record, by topic: {dict(by_topic)}"
        print(f"monitor error records: {len(set(sent) & recorded)} for {len(sent)} bad messages")

        # -- still alive and still answering
        _assert_alive(pipeline)
        with RagClient(settings) as client:
            answer = client.ask("What does the pass statement do?", timeout_s=120, max_new_tokens=16)
        assert answer.status == "ok", answer
        _assert_alive(pipeline)
    finally:
        codes = pipeline.stop(timeout_s=40)
    assert all(c == 0 for c in codes.values()), codes


def test_fuzzer_only_makes_invalid_messages() -> None:
    """The generator itself: every value it makes fails validation for its topic's model (no network)."""
    fuzzer = Fuzzer(random.Random(1))
    for topic, model in MODELS.items():
        for _ in range(300):
            _kind, value = fuzzer.make(topic)
            assert not _is_valid(value, model)
