"""The transformers engine's n-gram ban: an answer cannot say the same n tokens twice (pure)."""

from __future__ import annotations

from devstack.tgi.transformers_engine import repeated_ngram_ends


def test_the_token_completing_a_seen_ngram_is_banned() -> None:
    assert repeated_ngram_ends([1, 2, 3, 4, 9, 1, 2, 3], 4) == {4}
    assert repeated_ngram_ends([7, 8, 7, 8, 7], 3) == {8}


def test_nothing_is_banned_before_a_prefix_repeats_or_when_off() -> None:
    assert repeated_ngram_ends([1, 2, 3, 4, 9, 1, 2], 4) == set()
    assert repeated_ngram_ends([1, 2, 3], 4) == set()
    assert repeated_ngram_ends([1, 2, 3, 4, 9, 1, 2, 3], 0) == set()
