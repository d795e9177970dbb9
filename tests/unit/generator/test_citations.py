"""Citations of answers: the model's [n] markers, else attribution by word overlap; groundedness (pure)."""

from __future__ import annotations

from workers.generator.citations import attribute, cite, content_words, groundedness, markers

PASSAGES = [
    "The pass statement is a null operation: when it is executed, nothing happens.",
    "The del statement removes the binding of a name from the local or global namespace.",
    "The with statement wraps the execution of a block with methods defined by a context manager.",
]


def test_an_answer_copying_a_sentence_of_passage_two_cites_passage_two() -> None:
    answer = "Deleting works like this. The del statement removes the binding of a name from the local namespace."
    c = cite(answer, PASSAGES)
    assert c.cited == (1,) and c.cited_by == "attribution"
    assert c.groundedness > 0.6


def test_an_answer_unrelated_to_every_passage_cites_none() -> None:
    c = cite("Bananas are yellow fruit growing in tropical climates.", PASSAGES)
    assert c.cited == () and c.cited_by is None and c.groundedness == 0.0


def test_valid_model_markers_win_and_out_of_range_markers_are_ignored() -> None:
    c = cite("Nothing happens [1]. It removes a name [2][7]. See [1, 3].", PASSAGES)
    assert c.cited == (0, 1, 2) and c.cited_by == "model"
    assert markers("only [9] here", 3) == set()
    assert cite("only [9] here", PASSAGES).cited_by is None  # no valid marker: attribution finds nothing


def test_attribution_needs_the_threshold_share_of_content_words() -> None:
    answer = "The context manager wraps execution of the block, also bananas and apples and pears."
    assert attribute(answer, PASSAGES, threshold=0.3) == {2}
    assert attribute(answer, PASSAGES, threshold=0.9) == set()


def test_content_words_drop_stop_words_and_short_words() -> None:
    assert content_words("The del statement is in THE namespace of a module") == [
        "del",
        "statement",
        "namespace",
        "module",
    ]


def test_groundedness_is_the_share_of_answer_words_in_the_cited_passages() -> None:
    assert groundedness("del removes bananas", PASSAGES, [1]) == 2 / 3
    assert groundedness("del removes bananas", PASSAGES, []) == 0.0
