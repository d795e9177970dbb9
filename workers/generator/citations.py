"""Which passages an answer cites: the model's own ``[n]`` markers, or attribution by word overlap (pure, no I/O).

Larger models follow an instruction to cite passages as ``[1]``, ``[2][3]`` or ``[1, 2]``; those markers are parsed
and checked against the number of passages in the prompt (a marker past the last passage is ignored). A small
model (SmolLM2-135M) does not write them, so when an answer has no valid marker every answer sentence is
attributed to the passage that contains the largest share of its content words, when that share reaches a
threshold (``generator.attribution_threshold``, 0.5 by default): a sentence copied or paraphrased closely from a
passage cites it; a sentence unrelated to every passage cites nothing.

Groundedness of an answer: the share of its content words (lower-cased words of 3+ letters that are not stop
words) found in the passages it cites; 0 when it cites none (a lexical proxy, not a judgement of truth).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

#: ``[1]``, ``[2][3]``, ``[1, 2]``, ``[1,2,3]``.
_MARKER = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{2,}")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
#: English function words left out of the overlap (they match every passage).
STOP_WORDS = frozenset(
    "the and for are but not you all any can had her was one our out has him his how its may new now old see two "
    "way who did get let put say she too use that with have this will your from they been were said each which "
    "their there what about would make like into than them then these some could other more when also only very "
    "just over such used using answer question passage passages".split()
)

CitedBy = Literal["model", "attribution"]


@dataclass(frozen=True)
class Citations:
    """What an answer cites.

    Attributes:
        cited: 0-based indexes of the cited passages, ascending.
        cited_by: ``model`` (valid ``[n]`` markers in the answer), ``attribution`` (word overlap), or ``None``
            when nothing is cited.
        groundedness: share (0 to 1) of the answer's content words found in the cited passages.
    """

    cited: tuple[int, ...]
    cited_by: CitedBy | None
    groundedness: float


def content_words(text: str) -> list[str]:
    """Lower-cased words of 3+ letters (identifiers included) that are not stop words, in order."""
    return [w for w in (m.group(0).lower() for m in _WORD.finditer(text)) if w not in STOP_WORDS]


def markers(answer: str, passages: int) -> set[int]:
    """0-based passage indexes the answer cites with ``[n]`` markers (1-based in the text), within ``passages``."""
    out: set[int] = set()
    for m in _MARKER.finditer(answer):
        for part in m.group(1).split(","):
            n = int(part)
            if 1 <= n <= passages:
                out.add(n - 1)
    return out


def sentences(text: str) -> list[str]:
    """The answer cut into sentences (after ``.``, ``!``, ``?`` and at line breaks), empty ones dropped."""
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def attribute(answer: str, passages: Sequence[str], threshold: float = 0.5) -> set[int]:
    """0-based indexes of the passages the answer's sentences are attributed to.

    A sentence with at least 2 content words goes to the passage holding the largest share of them (ties: the
    better-ranked passage), when that share is at least ``threshold``.
    """
    vocab = [set(content_words(p)) for p in passages]
    out: set[int] = set()
    for sentence in sentences(answer):
        words = content_words(sentence)
        if len(words) < 2 or not vocab:
            continue
        shares = [sum(w in v for w in words) / len(words) for v in vocab]
        best = max(range(len(shares)), key=lambda i: (shares[i], -i))
        if shares[best] >= threshold:
            out.add(best)
    return out


def groundedness(answer: str, passages: Sequence[str], cited: Sequence[int]) -> float:
    """Share of the answer's content words found in the cited passages (0 when it has none or cites none)."""
    words = content_words(answer)
    if not words or not cited:
        return 0.0
    vocab: set[str] = set()
    for i in cited:
        vocab.update(content_words(passages[i]))
    return sum(w in vocab for w in words) / len(words)


def cite(answer: str, passages: Sequence[str], threshold: float = 0.5) -> Citations:
    """The citations of an answer: the model's valid markers when it wrote any, else attribution."""
    by_model = markers(answer, len(passages))
    how: CitedBy = "model" if by_model else "attribution"
    ordered = tuple(sorted(by_model or attribute(answer, passages, threshold)))
    return Citations(ordered, how if ordered else None, groundedness(answer, passages, ordered))
