"""One streamed answer as the gateway assembles it from token events and the Response (pure: no I/O).

Events of a request arrive in order on the gateway replica's partition. Each generation *attempt* streams its text
from the beginning (``offset`` 0); a later attempt (a redelivered prompt after a generator crash) has a higher
number and the same seed, so its text should repeat what was already sent. :class:`StreamAssembler` keeps what the
client has been sent and, for each event, returns only text beyond it, after checking that the attempt's text
agrees with what was sent; when it does not, it raises :class:`ContradictionError` (the gateway ends the stream with
an error chunk: a client never gets contradictory text). The Response, the authoritative answer, is checked the
same way and gives whatever the events did not (the end of the text, or all of it when no event arrived).
"""

from __future__ import annotations

from workers.contracts.messages import ANSWER_STATUSES, Passage, Response, TokenEvent


class ContradictionError(Exception):
    """A new attempt's text (or the answer) differs from the text already sent to the client."""


class StreamAssembler:
    """What one client has been sent, and what to send next (see the module docstring)."""

    def __init__(self) -> None:
        self.sent = ""
        self.attempt: int | None = None
        self.attempts = 0
        self.resumed = False
        self.passages: list[Passage] = []
        self._text = ""
        self._gap = False

    def on_token(self, event: TokenEvent) -> str:
        """The new text to send for ``event`` ("" when none).

        Raises:
            ContradictionError: the event's attempt says something else than what was sent.
        """
        if self.attempt is not None and event.attempt < self.attempt:
            return ""  # an older attempt still talking (it lost its partition): the newer one is followed
        if event.attempt != self.attempt:
            if self.attempt is not None and self.sent:
                self.resumed = True
            self.attempt, self._text, self._gap = event.attempt, "", False
            self.attempts += 1
        if event.final and event.passages:
            self.passages = list(event.passages)
        if self._gap or event.offset != len(self._text):
            self._gap = True  # an event of this attempt is missing: wait for the Response
            return ""
        self._text += event.delta
        return self._advance(self._text)

    def on_response(self, resp: Response) -> str:
        """The rest of the answer to send once the Response is there ("" for an answer without text).

        Raises:
            ContradictionError: the answer does not start with what was sent.
        """
        if resp.status not in ANSWER_STATUSES or resp.answer is None:
            return ""
        return self._advance(resp.answer, final=True)

    def _advance(self, text: str, final: bool = False) -> str:
        n = min(len(text), len(self.sent))
        if text[:n] != self.sent[:n] or (final and len(text) < len(self.sent)):
            raise ContradictionError(
                f"the {'answer' if final else 'new attempt'} differs from the {len(self.sent)} characters already sent"
            )
        if len(text) <= len(self.sent):
            return ""
        new = text[len(self.sent) :]
        self.sent = text
        return new
