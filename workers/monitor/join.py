"""Trace assembly: one decoded event → the trace columns it owns, merging and change detection (pure, no I/O).

A trace row (one per request id) is assembled from up to four event kinds that arrive in any order and may
be redelivered. Each kind *owns* a fixed set of columns (:data:`OWNED_COLUMNS`); an event only ever writes
its own kind's columns, so the order of arrival does not matter for the row's content. Every part carries a
*version* ``(created_at, sig)`` where ``sig`` is a hash of the event's canonical JSON: a part replaces the
stored part of its kind only when its version is greater, so a redelivered event (same version) changes
nothing and two different events of one kind converge on the same winner whatever their order.

:func:`resolve` compares an update with the row's stored state and returns only the parts that apply plus a
:class:`TraceChange` (what changed, for metrics), which is how counters avoid double-counting redeliveries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from workers.contracts.messages import DeadLetter, Prompt, Request, Response
from workers.monitor.trace import (
    AT_COLUMN,
    MAX_RAW_BYTES,
    MONITOR_STAGE,
    SIG_COLUMN,
    STAGE_ALIASES,
    STAGES,
    ErrorRecord,
    EventKind,
    Joined,
    KafkaCoords,
    Part,
    TraceChange,
    TraceUpdate,
)


def _part(
    kind: EventKind, event: Request | Prompt | Response | DeadLetter, coords: KafkaCoords, values: Mapping[str, Any]
) -> Part:
    """The part of ``kind`` an event writes, versioned by the event's ``created_at`` and content hash."""
    return Part(kind=kind, sig=_sig(event), at=event.created_at, coords=coords, values=values)


def _sig(model: BaseModel) -> str:
    return hashlib.sha256(model.model_dump_json().encode("utf-8")).hexdigest()[:32]


def _request_part(req: Request, coords: KafkaCoords) -> Part:
    return _part(
        "request",
        req,
        coords,
        {
            "query": req.query,
            "top_k": req.top_k,
            "filters": dict(req.filters),
            "generation": req.generation.model_dump(mode="json"),
            "deadline": req.deadline,
            "session_id": req.session_id,
            "reply_topic": req.reply_topic,
        },
    )


def from_request(req: Request, coords: KafkaCoords) -> TraceUpdate:
    """The request columns of a trace.

    Args:
        req: the decoded request.
        coords: where it was read.

    Returns:
        An update with a ``request`` part.
    """
    return TraceUpdate(req.request_id, {"request": _request_part(req, coords)}, coords)


def from_prompt(prompt: Prompt, coords: KafkaCoords) -> TraceUpdate:
    """The prompt columns of a trace, plus the request columns from the request the prompt embeds.

    The embedded request is the same model as on the requests topic, so its part has the same version and a
    later (or earlier) request event changes nothing.

    Args:
        prompt: the decoded prompt.
        coords: where it was read.

    Returns:
        An update with ``request`` and ``prompt`` parts.
    """
    part = _part(
        "prompt",
        prompt,
        coords,
        {
            "passages": [
                {
                    "chunk_id": p.chunk_id,
                    "document_id": p.document_id,
                    "score": p.score,
                    "rank": p.rank,
                    "tokens": p.tokens,
                }
                for p in prompt.passages
            ],
            "messages": [m.model_dump(mode="json") for m in prompt.messages],
            "template_id": prompt.template_id,
            "template_hash": prompt.template_hash,
            "prompt_tokens": prompt.prompt_tokens,
            "max_new_tokens": prompt.max_new_tokens,
            "passages_dropped": prompt.passages_dropped,
            "query_tokens": prompt.query_tokens,
            "query_truncated": prompt.query_truncated,
            "embedding_model": prompt.embedding_model,
            "prompt_timings_ms": dict(prompt.timings_ms),
        },
    )
    parts: dict[EventKind, Part] = {"prompt": part}
    if prompt.request.request_id == prompt.request_id:
        parts["request"] = _request_part(prompt.request, coords)
    return TraceUpdate(prompt.request_id, parts, coords)


def from_response(resp: Response, coords: KafkaCoords) -> TraceUpdate:
    """The response columns of a trace.

    Args:
        resp: the decoded response.
        coords: where it was read.

    Returns:
        An update with a ``response`` part.
    """
    err = resp.error
    part = _part(
        "response",
        resp,
        coords,
        {
            "response_status": resp.status,
            "answer": resp.answer,
            "finish_reason": resp.finish_reason,
            "model_id": resp.model_id,
            "model_revision": resp.model_revision,
            "usage_prompt_tokens": resp.usage.prompt_tokens,
            "usage_completion_tokens": resp.usage.completion_tokens,
            "usage_total_tokens": resp.usage.total_tokens,
            "sources": [s.model_dump(mode="json") for s in resp.sources],
            "response_timings_ms": dict(resp.timings_ms),
            "response_error_class": err.error_class if err else None,
            "response_error_message": err.message if err else None,
            "response_error_stage": err.stage if err else None,
            "attempts": resp.attempts,
        },
    )
    return TraceUpdate(resp.request_id, {"response": part}, coords)


def dead_letter_request_id(dl: DeadLetter) -> uuid.UUID | None:
    """The request id a dead letter is about: its ``request_id`` field, else its ``request_id`` header."""
    if dl.request_id is not None:
        return dl.request_id
    header = dl.headers.get("request_id")
    if header:
        try:
            return uuid.UUID(header)
        except ValueError:
            return None
    return None


def from_dead_letter(dl: DeadLetter, coords: KafkaCoords) -> Joined:
    """A dead letter: always an error record; with a request id also the trace's dead-letter columns.

    Args:
        dl: the decoded dead letter.
        coords: where it was read (on the dead-letter topic).

    Returns:
        ``Joined(update, error)``; ``update`` is ``None`` when no request id can be found.
    """
    rid = dead_letter_request_id(dl)
    error = ErrorRecord(
        kind="dead_letter",
        source_topic=dl.source_topic,
        source_partition=dl.partition,
        source_offset=dl.offset,
        stage=dl.stage,
        error_class=dl.error_class,
        error_message=dl.error_message,
        request_id=rid,
        seen=coords,
        value_b64=dl.value_b64,
        attempts=dl.attempts,
        created_at=dl.created_at,
    )
    if rid is None:
        return Joined(error=error)
    part = _part(
        "dead_letter",
        dl,
        coords,
        {
            "dl_error_class": dl.error_class,
            "dl_error_message": dl.error_message,
            "dl_stage": dl.stage,
            "dl_source_topic": dl.source_topic,
            "dl_source_partition": dl.partition,
            "dl_source_offset": dl.offset,
            "dl_attempts": dl.attempts,
        },
    )
    return Joined(update=TraceUpdate(rid, {"dead_letter": part}, coords), error=error)


def assemble(event: Request | Prompt | Response | DeadLetter, coords: KafkaCoords) -> Joined:
    """Dispatch one decoded event to its ``from_*`` function.

    Args:
        event: a decoded wire model.
        coords: where it was read.

    Returns:
        The trace update and/or error record it yields.

    Raises:
        TypeError: ``event`` is not one of the four wire models.
    """
    if isinstance(event, Request):
        return Joined(update=from_request(event, coords))
    if isinstance(event, Prompt):
        return Joined(update=from_prompt(event, coords))
    if isinstance(event, Response):
        return Joined(update=from_response(event, coords))
    if isinstance(event, DeadLetter):
        return from_dead_letter(event, coords)
    raise TypeError(f"not a wire model: {type(event).__name__}")


def bad_message(
    raw: bytes | None, coords: KafkaCoords, exc: BaseException, observed_at: datetime | None = None
) -> ErrorRecord:
    """An error record for a message the monitor could not decode.

    Args:
        raw: the message value (kept base64, cut to :data:`MAX_RAW_BYTES`).
        coords: where it was read; also the record's key (stage ``"monitor"``).
        exc: the decoding error (its ``error_class`` attribute if it has one, else its type name).
        observed_at: when it was read (default: now, UTC).

    Returns:
        The error record; ``request_id`` is taken from the JSON when it has a valid one.
    """
    rid: uuid.UUID | None = None
    if raw:
        try:
            obj = json.loads(raw)
            if isinstance(obj, dict) and isinstance(obj.get("request_id"), str):
                rid = uuid.UUID(obj["request_id"])
        except (ValueError, UnicodeDecodeError, RecursionError):  # e.g. "[" * 100000 nests past the limit
            rid = None
    return ErrorRecord(
        kind="bad_message",
        source_topic=coords.topic,
        source_partition=coords.partition,
        source_offset=coords.offset,
        stage=MONITOR_STAGE,
        error_class=str(getattr(exc, "error_class", type(exc).__name__)),
        error_message=str(exc)[:4000],
        request_id=rid,
        seen=coords,
        value_b64=None if raw is None else base64.b64encode(raw[:MAX_RAW_BYTES]).decode("ascii"),
        created_at=observed_at or datetime.now(UTC),
    )


def merge_updates(updates: Iterable[TraceUpdate]) -> list[TraceUpdate]:
    """Merge the updates of one batch by request id (one update per id, in order of first appearance).

    Args:
        updates: updates in the order their events were read.

    Returns:
        One merged update per request id.
    """
    merged: dict[uuid.UUID, TraceUpdate] = {}
    for upd in updates:
        prev = merged.get(upd.request_id)
        merged[upd.request_id] = upd if prev is None else prev.merge(upd)
    return list(merged.values())


def stage_of(timing_key: str) -> str | None:
    """The histogram stage of one ``timings_ms`` key (``"embed_ms"`` → ``"embed"``), or ``None``.

    Keys ending in ``queue`` (``generator_queue_ms``) map to ``"queue"``; unknown keys give ``None``.
    """
    key = timing_key.lower()
    key = key[:-3] if key.endswith("_ms") else key
    if key in STAGES:
        return key
    if key in STAGE_ALIASES:
        return STAGE_ALIASES[key]
    if key.endswith("queue") or key.startswith("queue"):
        return "queue"
    return None


def stage_latencies(timings_ms: Mapping[str, Any]) -> dict[str, float]:
    """Per-stage latencies in seconds from a ``timings_ms`` map (milliseconds).

    Several keys of one stage (two queue waits) are summed; negative or non-numeric values are ignored.

    Args:
        timings_ms: stage key → milliseconds.

    Returns:
        stage label (one of :data:`STAGES`) → seconds.
    """
    out: dict[str, float] = {}
    for key, value in timings_ms.items():
        stage = stage_of(key)
        if stage is None or isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            continue
        out[stage] = out.get(stage, 0.0) + float(value) / 1000.0
    return out


def effective_error(state: Mapping[str, Any]) -> tuple[str, str] | None:
    """The row's ``(error_class, stage)``: the response's error, else the dead letter's, else ``None``."""
    if state.get("response_error_class"):
        return (str(state["response_error_class"]), str(state.get("response_error_stage") or ""))
    if state.get("dl_error_class"):
        return (str(state["dl_error_class"]), str(state.get("dl_stage") or ""))
    return None


def trace_status(state: Mapping[str, Any]) -> str:
    """The row's status (same rule as the table's generated ``status`` column).

    ``ok`` when an ok response exists; else ``dead_letter`` when a dead letter exists (a ``rejected`` request
    that failed validation has both); else the response's status (``error``, ``expired``, ``model_unavailable``,
    ``rejected``, ``no_context``); else ``prompted`` / ``requested``.
    """
    rs = state.get("response_status")
    if rs == "ok":
        return "ok"
    if state.get(SIG_COLUMN["dead_letter"]) is not None:
        return "dead_letter"
    if rs is not None:
        return str(rs)
    if state.get(SIG_COLUMN["prompt"]) is not None:
        return "prompted"
    if state.get(SIG_COLUMN["request"]) is not None:
        return "requested"
    return "unknown"


def _applies(state: Mapping[str, Any] | None, part: Part) -> bool:
    if state is None or state.get(SIG_COLUMN[part.kind]) is None:
        return True
    old_at = state.get(AT_COLUMN[part.kind])
    old_sig = str(state[SIG_COLUMN[part.kind]])
    if part.sig == old_sig:
        return False
    if old_at is None:
        return True
    return part.version > (old_at, old_sig)


def resolve(state: Mapping[str, Any] | None, update: TraceUpdate) -> tuple[TraceUpdate | None, TraceChange]:
    """Keep the parts of ``update`` that change the stored row, and say what changes.

    Args:
        state: the stored row's :data:`STATE_COLUMNS` (``None``: no row yet).
        update: the (batch-merged) update for that row.

    Returns:
        ``(effective, change)``: ``effective`` holds only the parts whose version is greater than the stored
        one (``None`` when nothing changes: a redelivery), ``change`` the transitions for the metrics.
    """
    applied = {k: p for k, p in update.parts.items() if _applies(state, p)}
    if not applied:
        return None, TraceChange(update.request_id)
    old: Mapping[str, Any] = state or {}
    new: dict[str, Any] = dict(old)
    for part in applied.values():
        new.update(part.columns())

    new_kinds = frozenset(k for k in applied if old.get(SIG_COLUMN[k]) is None)
    status = new.get("response_status") if new.get("response_status") != old.get("response_status") else None
    new_err = effective_error(new)
    error = new_err if new_err is not None and new_err != effective_error(old) else None

    latencies: dict[str, float] = {}
    if "response" in new_kinds:
        timings = {**(new.get("prompt_timings_ms") or {}), **(new.get("response_timings_ms") or {})}
        latencies = stage_latencies(timings)
    req_at, resp_at = AT_COLUMN["request"], AT_COLUMN["response"]
    had_both = old.get(req_at) is not None and old.get(resp_at) is not None
    has_both = new.get(req_at) is not None and new.get(resp_at) is not None
    if "end_to_end" not in latencies and has_both and not had_both:
        e2e = (new[resp_at] - new[req_at]).total_seconds()
        if e2e >= 0 and not any(stage_of(k) == "end_to_end" for k in (new.get("response_timings_ms") or {})):
            latencies["end_to_end"] = e2e
    change = TraceChange(update.request_id, new_kinds, status, error, latencies)
    return TraceUpdate(update.request_id, applied, update.last), change
