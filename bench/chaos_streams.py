"""Streaming clients of the chaos run: chat completions streamed through the gateway replicas during the faults.

:class:`StreamLoad` opens ``count`` streams (``POST /v1/chat/completions`` with ``stream: true``), spread evenly over
the load, round-robin over the gateway replicas, each on its own thread (as many concurrent streams as the faults
make slow). Each stream ends in one of four ways (:class:`StreamOutcome.kind`):

* ``complete``: a chunk with a ``finish_reason``, then ``data: [DONE]``;
* ``error_chunk``: an ``{"error": ...}`` chunk in the OpenAI shape, then ``data: [DONE]`` (the answer was an error,
  e.g. ``model_unavailable`` during the LLM's 503 window, or the stream could not go on);
* ``refused``: no stream at all, an HTTP 4xx/5xx with an OpenAI error body (e.g. 503 while the broker restarts);
* ``neither``: anything else — a connection dropped mid-stream, no ``[DONE]``, a read timeout, a body that is not
  the OpenAI shape. The chaos run requires none.

:func:`stream_checks` then compares every complete stream's text with the authoritative Response of its request id
on the responses topic (``X-Request-Id``): a stream whose text differs got another request's tokens, a token twice
or a gap (``mixed``, required 0), and a stream that was accepted (HTTP 200) but has no Response on the topic is lost.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from workers.contracts.messages import FINAL_STATUSES, Response

log = logging.getLogger("bench.chaos")

#: The four ways a stream can end (see the module docstring).
OUTCOMES = ("complete", "error_chunk", "refused", "neither")


@dataclass
class StreamOutcome:
    """How one streamed chat completion ended.

    Attributes:
        index: the stream's number in the load (0-based).
        gateway: the replica it went to (index into the URLs).
        kind: one of :data:`OUTCOMES`.
        request_id: the ``X-Request-Id`` the gateway answered with (None: no answer headers).
        text: the streamed content, concatenated.
        detail: the error's code and message, the HTTP status, or the exception (empty for complete streams).
        seconds: from the POST to the end of the stream (s).
    """

    index: int
    gateway: int
    kind: str
    request_id: uuid.UUID | None = None
    text: str = ""
    detail: str = ""
    seconds: float = 0.0


def parse_stream(lines: Sequence[str]) -> tuple[str, str, str]:
    """Classify the ``data:`` lines of one SSE stream.

    Args:
        lines: the non-empty lines of the response body, in order.

    Returns:
        ``(kind, text, detail)``: kind ``complete``, ``error_chunk`` or ``neither`` (see the module docstring),
        the content deltas concatenated, and the error (code: message) or why the stream is ``neither``.
    """
    text, finish, error = "", "", ""
    done = False
    for line in lines:
        if not line.startswith("data: "):
            continue
        if done:
            return "neither", text, "data after [DONE]"
        payload = line[6:]
        if payload == "[DONE]":
            done = True
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            return "neither", text, f"not JSON: {payload[:80]!r}"
        if not isinstance(data, dict):
            return "neither", text, f"not an object: {payload[:80]!r}"
        if "error" in data:
            err = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
            error = f"{err.get('code') or err.get('type')}: {err.get('message')}"
            continue
        for choice in data.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
    if not done:
        return "neither", text, "no data: [DONE]"
    if error:
        return ("error_chunk", text, error) if not finish else ("neither", text, f"finish_reason and {error}")
    if finish:
        return "complete", text, ""
    return "neither", text, "[DONE] without finish_reason or error"


def stream_once(
    client: httpx.Client, url: str, key: str, body: dict[str, object], index: int, gateway: int
) -> StreamOutcome:
    """Open one stream at ``url`` (a gateway's base URL) and read it to the end.

    Never raises: a transport failure is a ``neither`` outcome naming the exception.
    """
    t0 = time.monotonic()
    out = StreamOutcome(index, gateway, "neither")
    try:
        with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r:
            rid = r.headers.get("x-request-id")
            out.request_id = uuid.UUID(rid) if rid else None
            if r.status_code != 200:
                r.read()
                try:
                    err = r.json()["error"]
                    out.kind, out.detail = "refused", f"HTTP {r.status_code} {err.get('code')}: {err.get('message')}"
                except (ValueError, KeyError, TypeError):
                    out.detail = f"HTTP {r.status_code} without an OpenAI error body: {r.text[:120]!r}"
            else:
                lines = [line for line in r.iter_lines() if line]
                out.kind, out.text, out.detail = parse_stream(lines)
    except (httpx.HTTPError, ValueError) as exc:
        out.kind, out.detail = "neither", f"{type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - t0
    return out


class StreamLoad:
    """``count`` streams spread evenly over ``seconds``, round-robin over the gateway ``urls``.

    Args:
        urls: the gateway replicas' base URLs (``http://127.0.0.1:PORT``).
        key: an API key they accept.
        queries: question texts (cycled).
        count: streams to open.
        seconds: span of the load (s); stream i starts at ``i * seconds / count``.
        max_tokens: generation budget of stream i is ``max_tokens + i % 16`` (the texts vary in length).
        timeout_s: a client's read timeout (s): longer than the gateway's own answer timeout.
    """

    def __init__(
        self,
        urls: Sequence[str],
        key: str,
        queries: Sequence[str],
        count: int,
        seconds: float,
        max_tokens: int,
        timeout_s: float = 200.0,
    ) -> None:
        self.urls = list(urls)
        self.key = key
        self.queries = list(queries)
        self.count = count
        self.seconds = seconds
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.outcomes: list[StreamOutcome] = []
        self._lock = threading.Lock()

    def body(self, i: int) -> dict[str, object]:
        """The request body of stream ``i`` (a different seed each: a mixed stream would not match its answer)."""
        return {
            "model": "ragstream",
            "messages": [{"role": "user", "content": self.queries[i % len(self.queries)]}],
            "stream": True,
            "max_tokens": self.max_tokens + i % 16,
            "seed": 7000 + i,
        }

    def run(self, start: float) -> None:
        """Open the streams from monotonic time ``start`` on; returns when every stream has ended."""
        if self.count <= 0 or not self.urls:
            return
        limits = httpx.Limits(max_connections=self.count, max_keepalive_connections=16)
        with (
            httpx.Client(timeout=httpx.Timeout(self.timeout_s, connect=10.0), limits=limits) as client,
            ThreadPoolExecutor(max_workers=min(self.count, 128), thread_name_prefix="chaos-stream") as pool,
        ):
            for i in range(self.count):
                delay = start + i * self.seconds / self.count - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                g = i % len(self.urls)
                pool.submit(self._one, client, i, g)
        log.info("streams done: %s", dict(Counter(o.kind for o in self.outcomes)))

    def _one(self, client: httpx.Client, i: int, g: int) -> None:
        out = stream_once(client, self.urls[g], self.key, self.body(i), i, g)
        with self._lock:
            self.outcomes.append(out)


#: Gateway counters the chaos table reports (summed over the replicas): metric name → row label.
GATEWAY_COUNTERS = {
    "ragstream_gateway_streams_resumed": "  streams resumed from a new attempt (generator killed mid-stream)",
    "ragstream_gateway_streams_contradicted": "  streams ended because a new attempt's text differed",
}


def gateway_counters(urls: Sequence[str]) -> dict[str, float]:
    """:data:`GATEWAY_COUNTERS` summed over the replicas' ``/metrics`` (a replica that does not answer counts 0)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = dict.fromkeys(GATEWAY_COUNTERS, 0.0)
    for url in urls:
        try:
            text = httpx.get(url + "/metrics", timeout=10).text
        except httpx.HTTPError:
            continue
        for family in text_string_to_metric_families(text):
            if family.name in out:
                out[family.name] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return out


def _answer(responses: Sequence[Response]) -> Response | None:
    """The authoritative answer among a request id's Responses: the first final one, else the last."""
    finals = [r for r in responses if r.status in FINAL_STATUSES]
    return finals[0] if finals else (responses[-1] if responses else None)


def stream_checks(
    outcomes: Sequence[StreamOutcome],
    by_id: dict[uuid.UUID, list[Response]],
    count: int,
    gateways: int,
    counters: dict[str, float] | None = None,
) -> tuple[list[tuple[str, str, str, bool | None]], list[str]]:
    """The stream rows of the chaos table and the events that explain failures.

    Args:
        outcomes: every stream's outcome.
        by_id: request id → its Responses on the responses topic, in offset order.
        count: streams the load was to open.
        gateways: gateway replicas.
        counters: the gateways' counters (:func:`gateway_counters`), reported as information.

    Returns:
        ``([(check, value, expected, ok)], [event lines])``; ok None means information only.
    """
    kinds = Counter(o.kind for o in outcomes)
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"streams through {gateways} gateway replicas", str(len(outcomes)), str(count), len(outcomes) == count),
        ("  complete (finish_reason, [DONE])", str(kinds["complete"]), "info", None),
        ("  ended with an error chunk", str(kinds["error_chunk"]), "info", None),
        ("  refused with an OpenAI error (no stream)", str(kinds["refused"]), "info", None),
        ("  neither (cut, no [DONE], not the OpenAI shape)", str(kinds["neither"]), "0", kinds["neither"] == 0),
    ]
    events: list[str] = []
    mixed, lost = 0, 0
    accepted = [o for o in outcomes if o.kind != "refused" and o.request_id is not None]
    for o in outcomes:
        if o.kind == "neither" and len(events) < 10:
            events.append(f"stream {o.index} via gateway-{o.gateway} ({o.request_id}): neither: {o.detail}")
    for o in accepted:
        assert o.request_id is not None
        answer = _answer(by_id.get(o.request_id, []))
        if answer is None:
            lost += 1
            events.append(f"stream {o.index} ({o.request_id}): accepted, no Response on the topic")
            continue
        if o.kind == "complete" and (answer.status not in ("ok", "no_context") or o.text != (answer.answer or "")):
            mixed += 1
            if len(events) < 20:
                events.append(
                    f"stream {o.index} ({o.request_id}) text differs from its Response ({answer.status}): "
                    f"{o.text[:60]!r} vs {(answer.answer or '')[:60]!r}"
                )
    rows += [
        ("  complete streams whose text differs from their Response (mixed)", str(mixed), "0", mixed == 0),
        ("  accepted streams without a Response on the topic", str(lost), "0", lost == 0),
    ]
    for name, value in (counters or {}).items():
        rows.append((GATEWAY_COUNTERS.get(name, name), f"{value:g}", "info", None))
    errors = Counter(o.detail.split(":")[0] for o in outcomes if o.kind in ("error_chunk", "refused"))
    if errors:
        events.append("stream errors by code: " + ", ".join(f"{k} {v}" for k, v in errors.most_common()))
    return rows, events


__all__ = [
    "GATEWAY_COUNTERS",
    "OUTCOMES",
    "StreamLoad",
    "StreamOutcome",
    "gateway_counters",
    "parse_stream",
    "stream_checks",
    "stream_once",
]
