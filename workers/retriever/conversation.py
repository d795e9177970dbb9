"""Conversations: the search query of a follow-up question, and which earlier turns fit the prompt (pure).

A follow-up question often cannot be searched on its own ("what about its return value?"): when the last user
message is short (fewer than ``short_words`` words) or refers back (a pronoun or "what about ..."), the search query
is the last ``max_turns`` earlier user messages followed by it. Otherwise it is the question alone, so an unrelated
new question is not pulled towards the earlier topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from workers.contracts.messages import ChatMessage

#: Words that refer back to something said before.
_REFERS_BACK = re.compile(
    r"\b(it|its|it's|they|them|their|theirs|this|that|these|those|he|she|him|his|her|there|above|previous|"
    r"earlier|former|latter|same|such|also|too)\b",
    re.IGNORECASE,
)
_CONTINUES = re.compile(r"^\s*(and|or|but|what about|how about|and what|why|why not|so)\b", re.IGNORECASE)
_WORD = re.compile(r"\w+")


def refers_back(question: str, short_words: int = 6) -> bool:
    """True when ``question`` is short (fewer than ``short_words`` words) or refers to something said before."""
    words = _WORD.findall(question)
    return len(words) < short_words or bool(_REFERS_BACK.search(question) or _CONTINUES.search(question))


def search_query(
    question: str, history: Sequence[ChatMessage], *, short_words: int = 6, max_turns: int = 2, max_chars: int = 4000
) -> str:
    """The text to search for ``question`` asked after ``history`` (see the module docstring).

    Args:
        question: the last user message.
        history: earlier turns, oldest first.
        short_words: a question with fewer words counts as short.
        max_turns: earlier user messages prepended at most (the most recent ones).
        max_chars: the earlier messages are cut from the front to keep the query at most this long.
    """
    earlier = [m.content.strip() for m in history if m.role == "user" and m.content.strip()]
    if not earlier or not refers_back(question, short_words):
        return question
    context = " ".join(earlier[-max_turns:])
    room = max(0, max_chars - len(question) - 1)
    return f"{context[-room:]} {question}" if room else question
