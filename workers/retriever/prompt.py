"""Chat templates and prompt building within the LLM server's token limits (pure: no ML, no Kafka).

A :class:`PromptTemplate` fills a system message and a user message with numbered passages
(``[1] (document_id) text``) and the question. :func:`build_prompt` keeps the prompt within the server's
limits by dropping the LOWEST-ranked passages first; it never changes the generation budget
(``max_new_tokens``): when even zero passages do not fit it raises :class:`PromptTooLargeError`.

Token counting: the prompt is counted as the model would see it, approximately but conservatively: the
message contents joined by a newline, counted with the LLM's tokenizer in one call, plus
:data:`PER_MESSAGE_OVERHEAD_TOKENS` per message for the chat template's role markers and special tokens.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from workers.contracts.errors import ConfigError, PromptTooLargeError
from workers.contracts.messages import ChatMessage

logger = logging.getLogger(__name__)

#: Tokens a chat template adds around each message (role header, begin/end markers, newlines). ChatML
#: (``<|im_start|>user\n … <|im_end|>\n``) adds 5, Llama 3 adds 5, Mistral fewer; 8 leaves a margin. The
#: assistant header that opens the answer is counted as one more message.
PER_MESSAGE_OVERHEAD_TOKENS = 8

#: How far the per-passage estimate may overshoot before a passage is not even tried (tokens).
_ESTIMATE_SLACK_TOKENS = 16

#: With ``estimate_margin_tokens``, the margin the retriever uses: a prompt whose estimate is at least this
#: many tokens under the budget is not recounted as a whole. The estimate differs from the whole-prompt
#: count only at the passage boundaries (a few tokens: with the dev server's byte-level BPE tokenizer it is
#: 3 tokens HIGHER than the whole count on every one of 600 prompts from the Python docs).
ESTIMATE_MARGIN_TOKENS = 64

#: ``count_tokens(texts) -> counts``: tokens of each text in the LLM's tokenizer.
CountTokens = Callable[[list[str]], list[int]]


class PassageLike(Protocol):
    """What a ranked passage must provide (``store.Hit`` does)."""

    @property
    def document_id(self) -> str: ...

    @property
    def text(self) -> str: ...


#: The caller's passage type (e.g. ``store.Hit``), kept in :attr:`BuiltPrompt.passages_kept`.
H = TypeVar("H", bound=PassageLike)


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template: a system message and a user message with ``{passages}`` and ``{question}``.

    Attributes:
        template_id: registry key (``"default"``, ``"concise"``).
        system: the system message.
        user: the user message; placeholders ``{passages}`` and ``{question}``.
        passage: one passage; placeholders ``{n}`` (1-based), ``{document_id}``, ``{text}``.
        separator: between passages.
        no_passages: put in place of the passages when none are kept.
    """

    template_id: str
    system: str
    user: str
    passage: str = "[{n}] ({document_id}) {text}"
    separator: str = "\n\n"
    no_passages: str = "(no passages)"
    template_hash: str = field(init=False)

    def __post_init__(self) -> None:
        canonical = "\x1f".join((self.system, self.user, self.passage, self.separator, self.no_passages))
        object.__setattr__(self, "template_hash", hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12])

    def render_passage(self, n: int, passage: PassageLike) -> str:
        """One numbered passage (``n`` is 1-based)."""
        return self.passage.format(n=n, document_id=passage.document_id, text=passage.text.strip())

    def messages(self, question: str, passages: Sequence[PassageLike]) -> list[ChatMessage]:
        """The filled chat: ``[system, user]`` with the passages numbered from 1 in the given order."""
        body = self.separator.join(self.render_passage(i + 1, p) for i, p in enumerate(passages))
        user = self.user.format(passages=body or self.no_passages, question=question.strip())
        return [ChatMessage(role="system", content=self.system), ChatMessage(role="user", content=user)]


TEMPLATES: dict[str, PromptTemplate] = {
    t.template_id: t
    for t in (
        PromptTemplate(
            template_id="default",
            system=(
                "You are a helpful assistant that answers questions about the documents below. Answer ONLY "
                "from the numbered passages in the user's message. Cite the passages you use by their "
                "numbers in square brackets, like [1] or [2][3]. If the passages do not contain the answer, "
                "say that you do not know; do not make anything up."
            ),
            user="Passages:\n\n{passages}\n\nQuestion: {question}",
        ),
        PromptTemplate(
            template_id="concise",
            system=(
                "Answer in at most three sentences, using only the numbered passages. Cite them as [1], "
                "[2], ... If they do not answer the question, reply: I don't know."
            ),
            user="{passages}\n\nQ: {question}\nA:",
        ),
    )
}


def get_template(template_id: str) -> PromptTemplate:
    """The registered template with this id.

    Raises:
        ConfigError: no such template (the message lists the known ids).
    """
    try:
        return TEMPLATES[template_id]
    except KeyError:
        raise ConfigError(f"unknown prompt template {template_id!r}; known: {sorted(TEMPLATES)}") from None


@dataclass(frozen=True)
class BuiltPrompt(Generic[H]):
    """A filled template that fits the server's limits.

    Attributes:
        messages: the chat to send (system, user).
        passages_kept: the passages in the prompt, best ranked first (a prefix of the input ranking).
        passages_dropped: how many lowest-ranked passages were left out to fit.
        prompt_tokens: counted prompt tokens (LLM tokenizer, message overhead included).
        max_new_tokens: the generation budget, unchanged from the request.
        passage_tokens: tokens of each kept passage as rendered (LLM tokenizer), same order.
        template_id: id of the template used.
        template_hash: its hash (12 hex).
        history_kept: earlier turns of the conversation in the prompt.
    """

    messages: list[ChatMessage]
    passages_kept: list[H]
    passages_dropped: int
    prompt_tokens: int
    max_new_tokens: int
    passage_tokens: list[int]
    template_id: str
    template_hash: str
    #: Earlier turns of the conversation in the prompt (the most recent ones; see :func:`add_history`).
    history_kept: int = 0


def add_history(
    built: BuiltPrompt[H],
    history: Sequence[ChatMessage],
    count_tokens: CountTokens,
    budget: int | None,
) -> BuiltPrompt[H]:
    """``built`` with as many of the most recent earlier turns as fit in ``budget`` after its passages.

    The turns go between the system message and the question, oldest first; a kept run starts with a user turn
    (templates that want roles to alternate). Earlier system messages (a client's instructions) are appended to the
    system message when they fit, before any turn. Each message costs its tokens plus
    :data:`PER_MESSAGE_OVERHEAD_TOKENS`.

    Args:
        built: the prompt with its passages.
        history: earlier turns, oldest first.
        count_tokens: tokens of each text in the LLM's tokenizer.
        budget: prompt tokens allowed (``None``: no limit, every turn is kept).

    Returns:
        The prompt with the turns (``history_kept`` says how many) and its token count raised by theirs.
    """
    if not history:
        return built
    system = [m.content for m in history if m.role == "system"]
    turns = [m for m in history if m.role != "system"]
    counts = count_tokens([*system, *(m.content for m in turns)]) if budget is not None else [0] * len(history)
    room = None if budget is None else budget - built.prompt_tokens
    used = 0
    extra: list[str] = []
    for text, n in zip(system, counts[: len(system)], strict=True):
        if room is None or used + n <= room:
            extra.append(text)
            used += n
    kept = 0
    for n in reversed(counts[len(system) :]):
        cost = n + PER_MESSAGE_OVERHEAD_TOKENS
        if room is not None and used + cost > room:
            break
        used += cost
        kept += 1
    chosen = turns[len(turns) - kept :]
    while chosen and chosen[0].role != "user":
        used -= counts[len(system) + len(turns) - len(chosen)] + PER_MESSAGE_OVERHEAD_TOKENS
        chosen = chosen[1:]
    if not chosen and not extra:
        return built
    first = built.messages[0]
    head = [ChatMessage(role="system", content="\n\n".join([first.content, *extra]))] if first.role == "system" else []
    messages = [*head, *chosen, *built.messages[len(head) :]]
    return replace(built, messages=messages, prompt_tokens=built.prompt_tokens + used, history_kept=len(chosen))


def _joined(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages)


def build_prompt(
    request_query: str,
    hits: Sequence[H],
    template: PromptTemplate,
    count_tokens: CountTokens,
    max_input_tokens: int | None,
    max_total_tokens: int | None,
    max_new_tokens: int,
    estimate_margin_tokens: int | None = None,
    history: Sequence[ChatMessage] = (),
) -> BuiltPrompt[H]:
    """Fill the template with as many of the best-ranked passages as the token limits allow.

    The prompt must satisfy ``prompt_tokens + max_new_tokens <= max_total_tokens`` and
    ``prompt_tokens <= max_input_tokens``; passages are dropped from the lowest rank up. Counting takes
    two calls of ``count_tokens`` in the usual case (the pieces, then the chosen prompt as a whole), a few
    more only when the tokenizer is not additive at the passage boundaries.

    Args:
        request_query: the user's question.
        hits: passages ranked best first.
        template: the chat template.
        count_tokens: tokens of each text in the LLM's tokenizer.
        max_input_tokens: the server's prompt limit (tokens); ``None`` = only ``max_total_tokens`` applies.
        max_total_tokens: the server's prompt + generation limit (tokens); ``None`` = no total limit.
        max_new_tokens: the generation budget (tokens); never changed.
        estimate_margin_tokens: ``None`` (default): the chosen prompt is always counted as a whole, and
            ``prompt_tokens`` is that count. A number: when the estimate (the template's and the passages'
            separately counted tokens, which the caller may cache) is at least this many tokens under the
            budget, or there is no budget, the whole-prompt count is skipped and ``prompt_tokens`` is the
            estimate; near the budget the whole prompt is still counted.

    Returns:
        The messages, kept and dropped passages, and the prompt's token count.

    Raises:
        PromptTooLargeError: ``max_new_tokens`` alone reaches ``max_total_tokens``, or the template with the
            question and no passage does not fit.
    """
    limits: list[int] = []
    if max_total_tokens is not None:
        if max_new_tokens >= max_total_tokens:
            raise PromptTooLargeError(
                f"max_new_tokens {max_new_tokens} leaves no room for a prompt within the server's "
                f"max_total_tokens {max_total_tokens}"
            )
        limits.append(max_total_tokens - max_new_tokens)
    if max_input_tokens is not None:
        limits.append(max_input_tokens)
    budget = min(limits) if limits else None
    n_messages = len(template.messages(request_query, []))
    overhead = PER_MESSAGE_OVERHEAD_TOKENS * (n_messages + 1)

    # Call 1: the empty template, one rendered passage (+separator) each, and the empty string (the
    # tokenizer's own special tokens, counted once per text, so subtracted from the pieces).
    pieces = [template.render_passage(i + 1, h) + template.separator for i, h in enumerate(hits)]
    empty = _joined(template.messages(request_query, []))
    counts = count_tokens([empty, "", *pieces])
    base, special, piece_counts = counts[0], counts[1], counts[2:]
    passage_tokens = [max(c - special, 0) for c in piece_counts]

    def estimate(n: int) -> int:
        return base + overhead + sum(passage_tokens[:n])

    n = len(hits)
    if budget is not None:
        while n > 0 and estimate(n) > budget:
            n -= 1
    if estimate_margin_tokens is not None and (budget is None or estimate(n) + estimate_margin_tokens <= budget):
        built = BuiltPrompt(
            messages=template.messages(request_query, hits[:n]),
            passages_kept=list(hits[:n]),
            passages_dropped=len(hits) - n,
            prompt_tokens=estimate(n),
            max_new_tokens=max_new_tokens,
            passage_tokens=passage_tokens[:n],
            template_id=template.template_id,
            template_hash=template.template_hash,
        )
        return add_history(built, history, count_tokens, budget)

    def exact(n: int) -> tuple[list[ChatMessage], int]:
        msgs = template.messages(request_query, hits[:n])
        return msgs, count_tokens([_joined(msgs)])[0] + overhead

    # Call 2 (usually the last): the chosen prompt as a whole. Walk down while it is over the budget;
    # then try one more passage when the estimate was pessimistic.
    messages, tokens = exact(n)
    while budget is not None and tokens > budget and n > 0:
        n -= 1
        messages, tokens = exact(n)
    if budget is not None and tokens > budget:
        raise PromptTooLargeError(
            f"the prompt without any passage takes {tokens} tokens; the server allows {budget} "
            f"(max_total_tokens {max_total_tokens} - max_new_tokens {max_new_tokens}, "
            f"max_input_tokens {max_input_tokens})"
        )
    while budget is not None and n < len(hits) and estimate(n + 1) <= budget + _ESTIMATE_SLACK_TOKENS:
        more_msgs, more_tokens = exact(n + 1)
        if more_tokens > budget:
            break
        n, messages, tokens = n + 1, more_msgs, more_tokens

    dropped = len(hits) - n
    if dropped:
        logger.debug("prompt passages dropped=%d kept=%d prompt_tokens=%d budget=%s", dropped, n, tokens, budget)
    built = BuiltPrompt(
        messages=messages,
        passages_kept=list(hits[:n]),
        passages_dropped=dropped,
        prompt_tokens=tokens,
        max_new_tokens=max_new_tokens,
        passage_tokens=passage_tokens[:n],
        template_id=template.template_id,
        template_hash=template.template_hash,
    )
    return add_history(built, history, count_tokens, budget)
