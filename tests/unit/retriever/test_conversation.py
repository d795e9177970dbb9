"""Conversations: the search query of a follow-up question and the earlier turns that fit the prompt (pure)."""

from __future__ import annotations

from workers.contracts.messages import ChatMessage
from workers.retriever.conversation import refers_back, search_query
from workers.retriever.prompt import PER_MESSAGE_OVERHEAD_TOKENS, TEMPLATES, build_prompt

from .test_prompt import WordCounter, passage

U, A, S = "user", "assistant", "system"


def turns(*pairs: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage(role=r, content=c) for r, c in pairs]  # type: ignore[arg-type]  # test roles are valid


def test_a_short_or_referring_question_is_searched_with_the_earlier_user_turns() -> None:
    history = turns((U, "What does the built-in len function do?"), (A, "It returns the number of items."))
    assert search_query("what about its return value?", history) == (
        "What does the built-in len function do? what about its return value?"
    )
    assert search_query("And for dicts?", history).startswith("What does the built-in len")
    full = "How does Python's garbage collector find reference cycles in containers?"
    assert search_query(full, history) == full  # a new, complete question stands alone
    assert search_query("and sets?", []) == "and sets?"  # nothing earlier
    assert refers_back("why?") and refers_back("Is that thread safe in CPython?")
    many = turns(*[(U, f"question number {i} about lists") for i in range(5)])
    assert (
        search_query("and tuples?", many) == "question number 3 about lists question number 4 about lists and tuples?"
    )


def test_the_prompt_keeps_the_most_recent_turns_that_fit_after_the_passages() -> None:
    history = turns(
        (S, "Answer in French."),
        (U, " ".join(["old"] * 100)),
        (A, " ".join(["oldanswer"] * 100)),
        (U, "What does len do?"),
        (A, "It counts items."),
    )
    counter = WordCounter()
    hits = [passage(r, 50) for r in range(3)]
    plain = build_prompt("and its return type?", hits, TEMPLATES["default"], counter.count, None, 600, 256)
    built = build_prompt(
        "and its return type?", hits, TEMPLATES["default"], counter.count, None, 600, 256, None, history
    )
    assert len(built.passages_kept) == 3  # passages first: history takes only what is left
    assert built.history_kept == 2  # the long old pair does not fit; the recent one does
    roles = [m.role for m in built.messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert built.messages[1].content == "What does len do?" and built.messages[-1] == plain.messages[-1]
    assert built.messages[0].content.endswith("Answer in French.")  # the client's instructions
    added = (3 + 1) + (4 + 1) + (3 + 1) + 2 * PER_MESSAGE_OVERHEAD_TOKENS  # system extra, two turns (+BOS each)
    assert built.prompt_tokens == plain.prompt_tokens + added <= 600 - 256
    # no limit: everything is kept
    free = build_prompt("q?", hits, TEMPLATES["default"], counter.count, None, None, 256, None, history)
    assert free.history_kept == 4
    # a run never starts with the assistant's turn: room for the last answer (12) but not its question (13)
    tight = build_prompt(
        "and its return type?", hits, TEMPLATES["default"], counter.count, None, plain.prompt_tokens + 256 + 21, 256,
        None, history,
    )  # fmt: skip
    assert tight.history_kept == 0 and [m.role for m in tight.messages] == ["system", "user"]
    assert tight.prompt_tokens == plain.prompt_tokens + 4  # only the system instructions were added
