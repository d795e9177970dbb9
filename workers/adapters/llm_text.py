"""What every LLM adapter does to what goes in and comes out, whichever server answers: stop sequences, finish
reasons, the system role, error bodies. Pure functions and one small class; no I/O library.

Servers differ (issue 16; issue 14 findings 1 and 2):

* **Stop text**: TGI (and the devstack server, which imitates it) includes the matched stop sequence in its output;
  OpenAI, vLLM, SGLang and llama.cpp exclude it. :class:`StopTextFilter` cuts the text before the first stop
  sequence as it streams in, also when the stop text arrives split across chunks, and holds back nothing but a
  possible beginning of a stop sequence; :func:`cut_at_stop` does the same on a finished text.
* **Finish reasons**: TGI says ``eos_token`` / ``stop_sequence`` / ``length``, OpenAI-style servers ``stop`` /
  ``length``. :func:`normalize_finish_reason` gives OpenAI's names: ``stop`` (the model ended, or a stop sequence
  did) and ``length`` (``max_new_tokens`` reached); other values pass through.
* **The system role**: chat templates of several instruct models refuse a system message (TGI 422 "System role
  not supported", vLLM 400, Mistral's "Conversation roles must alternate"). :func:`fold_system` moves the system
  prompt into the first user turn; :func:`rejects_system_role` recognizes the refusal in an error message.
* **Error bodies**: TGI ``{"error": "...", "error_type": "..."}``, OpenAI and vLLM ``{"error": {"message", "type",
  "code"}}``, SGLang ``{"object": "error", "message", "type", "code"}``, FastAPI ``{"detail": ...}``:
  :func:`error_message` reads any of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from workers.contracts.messages import ChatMessage

#: Finish reasons as ragstream reports them (OpenAI's names), keyed by what servers say.
_FINISH_REASONS = {
    "stop": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_length": "length",
}

#: How chat templates and servers word a refused system message.
_SYSTEM_ROLE_REFUSAL = re.compile(
    r"system role|system message.{0,40}not (supported|allowed)|roles must alternate", re.IGNORECASE
)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (without) the first stop sequence in it; all of ``text`` when none occurs.

    TGI's ``generated_text`` keeps the stop sequence; OpenAI-style servers (and ragstream's answers) do not.

    Args:
        text: The generated text.
        stops: Stop sequences (empty ones are ignored).
    """
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(ends)] if ends else text


class StopTextFilter:
    """Cuts a streamed text before its first stop sequence, chunk by chunk.

    ``"".join(f.feed(p) for p in pieces) + f.finish() == cut_at_stop("".join(pieces), stops)`` for any split of the
    text into pieces: what :meth:`feed` returns never contains a stop sequence nor the beginning of one that the next
    piece could complete (that tail is held back until it is known not to be one).

    Args:
        stops: Stop sequences (empty ones are ignored).

    Attributes:
        stopped: True once a stop sequence was seen; later pieces are dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.stopped = False
        self._pending = ""

    def feed(self, piece: str) -> str:
        """Take the next piece of the text; return what can be passed on now (possibly ``""``)."""
        if self.stopped or not piece:
            return ""
        if not self.stops:
            return piece
        buf = self._pending + piece
        cut = cut_at_stop(buf, self.stops)
        if len(cut) < len(buf):
            self.stopped = True
            self._pending = ""
            return cut
        keep = self._partial_stop_length(buf)
        self._pending = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def finish(self) -> str:
        """The end of the text: return what was held back (it was not a stop sequence after all)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _partial_stop_length(self, buf: str) -> int:
        """Length of the longest tail of ``buf`` that a stop sequence begins with (0 when none)."""
        longest = max(len(s) for s in self.stops) - 1
        for k in range(min(longest, len(buf)), 0, -1):
            tail = buf[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0


def normalize_finish_reason(reason: str | None, *, stopped_at_sequence: bool = False) -> str | None:
    """The finish reason in OpenAI's names: ``stop`` or ``length`` (others pass through, lower case).

    Args:
        reason: What the server said (``eos_token``, ``stop_sequence``, ``stop``, ``length``, ...; None: nothing).
        stopped_at_sequence: ragstream cut the text at a stop sequence itself (the answer ends there, ``stop``).
    """
    if stopped_at_sequence:
        return "stop"
    if reason is None:
        return None
    key = str(reason).strip().lower()
    return _FINISH_REASONS.get(key, key)


def fold_system(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The chat with its system messages folded into the first user turn (for templates without a system role).

    The system contents (in order, blank-line separated) are put before the first user message's content,
    separated by a blank line; without a user message they become one. Other messages keep their order.
    """
    system = [m.content for m in messages if m.role == "system"]
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return list(rest)
    preamble = "\n\n".join(system)
    for i, m in enumerate(rest):
        if m.role == "user":
            rest[i] = ChatMessage(role="user", content=f"{preamble}\n\n{m.content}")
            return rest
    return [ChatMessage(role="user", content=preamble), *rest]


def rejects_system_role(message: str) -> bool:
    """True when an LLM server's error message says the chat template refuses the system role."""
    return bool(_SYSTEM_ROLE_REFUSAL.search(message))


def error_message(body: str) -> str:
    """The message of an LLM server's error body in any of the known shapes (the body itself when none fits).

    Args:
        body: The HTTP response body (JSON, or text).

    Returns:
        ``"<type>: <message>"`` when the body names a type, else the message; at most 500 characters.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:500]
    msg: object = None
    kind: object = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):  # OpenAI, vLLM
            msg, kind = err.get("message"), err.get("type") or err.get("code")
        elif isinstance(err, str):  # TGI
            msg, kind = err, data.get("error_type")
        elif "message" in data:  # SGLang, older vLLM
            msg, kind = data.get("message"), data.get("type")
        elif "detail" in data:  # FastAPI
            msg = data.get("detail")
    if msg is None:
        return body.strip()[:500]
    text = msg if isinstance(msg, str) else json.dumps(msg)
    return (f"{kind}: {text}" if isinstance(kind, str) and kind else text)[:500]
