"""Request bodies of the TGI-compatible server (the subset of TGI's router schemas that clients send).

Unknown fields are ignored, as TGI's serde models would reject only a few of them; responses are built as
plain dicts in ``server.py`` following TGI's ``router/src/lib.rs`` (``GenerateResponse``, ``StreamResponse``,
``ChatCompletion``, ``ChatCompletionChunk``, ``Info``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateParameters(_Body):
    """TGI ``GenerateParameters``."""

    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: Any = None
    adapter_id: str | None = None


class GenerateRequest(_Body):
    """TGI ``GenerateRequest`` (``POST /generate``, ``/generate_stream``)."""

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class CompatGenerateRequest(GenerateRequest):
    """TGI ``CompatGenerateRequest`` (``POST /``): ``stream`` picks the streaming route."""

    stream: bool = False


class TokenizeRequest(GenerateRequest):
    """Body of ``POST /tokenize``."""


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    """One message; ``content`` is a string or a list of ``{"type": "text", "text": ...}`` chunks."""

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text (text chunks joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(c.get("text", "")) for c in self.content if c.get("type", "text") == "text")


class ChatRequest(_Body):
    """TGI ``ChatRequest`` (OpenAI chat completions)."""

    model: str | None = None
    messages: list[ChatMessage]
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: Any = None
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
