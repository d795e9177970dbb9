"""What every LLM adapter does to text whichever server answers: stop sequences, finish reasons, the system role,
error bodies (workers/adapters/llm_text.py; issue 14 findings 1 and 2, issue 16)."""

from __future__ import annotations

import json
import random

import pytest

from workers.adapters.llm_text import (
    StopTextFilter,
    cut_at_stop,
    error_message,
    fold_system,
    normalize_finish_reason,
    rejects_system_role,
)
from workers.contracts.messages import ChatMessage


def _stream(pieces: list[str], stops: list[str]) -> tuple[list[str], str, bool]:
    f = StopTextFilter(stops)
    out = [f.feed(p) for p in pieces]
    return out, "".join(out) + f.finish(), f.stopped


def test_stop_text_split_across_chunks_never_leaks() -> None:
    # Issue 14, finding 1: "Paris." then "\nUs" + "er:" with stop "\nUser:" must answer "Paris.".
    out, text, stopped = _stream(["Paris.", "\nUs", "er:", " And"], ["\nUser:"])
    assert text == "Paris." and stopped
    assert out == ["Paris.", "", "", ""]  # "\nUs" was held back, never passed on


def test_held_back_text_that_is_no_stop_comes_out() -> None:
    out, text, stopped = _stream(["Paris.", "\nUs", "ually"], ["\nUser:"])
    assert text == "Paris.\nUsually" and not stopped
    assert out == ["Paris.", "", "\nUsually"]
    _, text, stopped = _stream(["Paris.", "\nUs"], ["\nUser:"])  # the text ends on a possible stop beginning
    assert text == "Paris.\nUs" and not stopped


def test_first_of_several_stop_sequences_wins_and_later_pieces_are_dropped() -> None:
    _, text, _ = _stream(["a b", "c d", "e"], ["d", "bc"])  # "a bc de": "bc" begins before "d"
    assert text == "a "
    out, text, stopped = _stream(["one ", "two", " three"], ["two", "three"])
    assert (text, stopped, out[2]) == ("one ", True, "")
    _, text, _ = _stream(["xx"], [""])  # an empty stop sequence is no stop sequence
    assert text == "xx"


def test_streamed_cut_equals_the_cut_of_the_whole_text_for_any_split() -> None:
    rng = random.Random(16)
    alphabet = "ab\n:U "
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(0, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 6))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        out, streamed, _ = _stream(pieces, stops)
        assert streamed == cut_at_stop(text, stops), (text, stops, pieces)
        for s in stops:  # nothing passed on before the end contains a stop sequence
            assert s not in "".join(out)


@pytest.mark.parametrize(
    ("reason", "stopped", "expected"),
    [
        ("eos_token", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("stop", False, "stop"),
        ("length", False, "length"),
        ("LENGTH", False, "length"),
        ("length", True, "stop"),
        ("content_filter", False, "content_filter"),
        (None, False, None),
        (None, True, "stop"),
    ],
)
def test_finish_reasons_get_openai_names(reason: str | None, stopped: bool, expected: str | None) -> None:
    assert normalize_finish_reason(reason, stopped_at_sequence=stopped) == expected


def test_fold_system_puts_the_system_prompt_into_the_first_user_turn() -> None:
    msgs = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Q1"),
        ChatMessage(role="assistant", content="A1"),
        ChatMessage(role="user", content="Q2"),
    ]
    folded = fold_system(msgs)
    assert [m.role for m in folded] == ["user", "assistant", "user"]
    assert folded[0].content == "Be brief.\n\nQ1" and folded[2].content == "Q2"
    assert fold_system([ChatMessage(role="system", content="S")]) == [ChatMessage(role="user", content="S")]
    assert fold_system(msgs[1:]) == msgs[1:]


@pytest.mark.parametrize(
    "message",
    [
        "template_error: Template error: System role not supported",
        "Conversation roles must alternate user/assistant/user/assistant/...",
        "BadRequestError: system message is not supported by this model",
    ],
)
def test_system_role_refusals_are_recognized(message: str) -> None:
    assert rejects_system_role(message)


def test_other_errors_are_no_system_role_refusal() -> None:
    assert not rejects_system_role("validation: Input validation error: `inputs` must have less than 100 tokens")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "Input validation error: too long", "error_type": "validation"}, "validation: Input validation"),
        ({"error": {"message": "context too long", "type": "invalid_request_error", "code": 400}}, "invalid_request"),
        ({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}, "BadRequestError: bad"),
        ({"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}, "Field required"),
    ],
)
def test_error_bodies_of_every_server_shape(body: dict[str, object], expected: str) -> None:
    assert expected in error_message(json.dumps(body))


def test_error_body_that_is_no_json_is_returned_as_text() -> None:
    assert error_message("  Internal Server Error ") == "Internal Server Error"
    assert error_message(json.dumps({"something": "else"})) == '{"something": "else"}'
