"""OpenAI wire models: requests and responses of `/v1/chat/completions`, `/v1/completions`,
`/v1/embeddings`, `/v1/models`, and the one error shape.

Fields follow OpenAI's order; llmops and vLLM extensions come after the marker comment in each
request. Unknown request fields are accepted (`extra="allow"`) so that newer clients keep working;
the serving layer logs them as ignored.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ErrorDetail",
    "ErrorResponse",
    "ChatMessage",
    "StreamOptions",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "UsageInfo",
    "TopLogprob",
    "TokenLogprob",
    "ChoiceLogprobs",
    "CompletionLogprobs",
    "ChatCompletionResponse",
    "ChatCompletionChunk",
    "CompletionResponse",
    "EmbeddingResponse",
    "ModelCard",
    "ModelList",
]


_INT64 = (-(2**63), 2**63 - 1)  # vLLM's seed range (`protocol.py`: ge=_LONG_INFO.min, le=_LONG_INFO.max)


class _Request(BaseModel):
    # Strict types, as OpenAI's JSON schema has them: `"stream": "true"` is a 400 on both backends,
    # never a silent coercion, so what the upstream fleet forwards is exactly what was validated.
    # Unknown fields are accepted (newer clients keep working) and logged as ignored.
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True, allow_inf_nan=False)

    def declared(self, name: str, default: Any = None) -> Any:
        """The value of field `name` if this request type declares it, else `default`.

        Unlike `getattr`, never returns an unknown (unvalidated) field a client sent under that name.
        """
        return getattr(self, name) if name in type(self).__pydantic_fields__ else default


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------- errors


class ErrorDetail(_Response):
    """OpenAI's error object. `code` is a string id (`model_not_found`) or null."""

    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(_Response):
    """The only error body the gateway sends: `{"error": {...}}`."""

    error: ErrorDetail


# ------------------------------------------------------------------------------------------- requests


class _ContentPart(_Request):
    type: str
    text: Optional[str] = None


class ChatMessage(_Request):
    """One chat message; list content is joined from its `text` parts."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[_ContentPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        """The message content as plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(_Request):
    """`stream_options`: `include_usage` adds a last chunk with the usage and no choices."""

    include_usage: Optional[bool] = False


_Stop = Union[str, list[str], None]
Seed = Annotated[int, Field(ge=_INT64[0], le=_INT64[1])]


class _SamplingFields(_Request):
    """Fields shared by chat and text completions, checked the way vLLM's `SamplingParams._verify_args`
    checks them (vllm/sampling_params.py), so both backends refuse the same values with a 400."""

    @field_validator("stop", check_fields=False)
    @classmethod
    def _stop_list(cls, stop: _Stop) -> _Stop:
        items = [stop] if isinstance(stop, str) else (stop or [])
        if any(not item for item in items):
            raise ValueError("stop cannot contain an empty string")
        return stop

    @model_validator(mode="after")
    def _min_within_max(self) -> "_SamplingFields":
        minimum, maximum = self.declared("min_tokens"), self.requested_max_tokens()
        if minimum is not None and maximum is not None and minimum > maximum:
            raise ValueError(f"min_tokens must be less than or equal to max_tokens={maximum}, got {minimum}")
        return self

    def stop_list(self) -> list[str]:
        """`stop` as a list."""
        stop = self.declared("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    def requested_max_tokens(self) -> Optional[int]:
        """`max_completion_tokens` or `max_tokens`, None when the client set neither."""
        return self.declared("max_completion_tokens") or self.max_tokens

    def include_usage(self) -> bool:
        """True when the client asked for the usage chunk at the end of a stream."""
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    """`POST /v1/chat/completions`. `messages` may be omitted when a registry `prompt` supplies them."""

    # Ordered as in OpenAI's API reference (https://platform.openai.com/docs/api-reference/chat/create).
    messages: Optional[list[ChatMessage]] = None
    model: str = Field(min_length=1)
    frequency_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    n: Optional[int] = Field(1, ge=1)
    presence_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0)
    response_format: Optional[dict[str, Any]] = None
    seed: Optional[Seed] = None
    stop: _Stop = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    user: Optional[str] = None
    # --8<-- [start:chat-completion-extra-params] vLLM's sampling parameters; llmops' registry prompts
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)
    min_tokens: Optional[int] = Field(None, ge=0)
    ignore_eos: Optional[bool] = False
    prompt: Optional[str] = None
    """A registry prompt ref (`NAME@ALIAS`) rendered with `variables` in front of `messages`."""
    variables: Optional[dict[str, Any]] = None
    # --8<-- [end:chat-completion-extra-params]


class CompletionRequest(_SamplingFields):
    """`POST /v1/completions`. With `variables` present, `prompt` is a registry prompt ref."""

    # Ordered as in OpenAI's API reference (https://platform.openai.com/docs/api-reference/completions/create).
    model: str = Field(min_length=1)
    prompt: Union[str, list[str], list[int], list[list[int]]]
    best_of: Optional[int] = Field(None, ge=1)
    echo: Optional[bool] = False
    frequency_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    max_tokens: Optional[int] = Field(None, ge=1)
    n: Optional[int] = Field(1, ge=1)
    presence_penalty: Optional[float] = Field(0.0, ge=-2.0, le=2.0)
    seed: Optional[Seed] = None
    stop: _Stop = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    suffix: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    user: Optional[str] = None
    # --8<-- [start:completion-extra-params]
    top_k: Optional[int] = Field(None, ge=-1)
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)
    min_tokens: Optional[int] = Field(None, ge=0)
    ignore_eos: Optional[bool] = False
    variables: Optional[dict[str, Any]] = None
    """With `variables`, `prompt` is a registry prompt ref rendered server-side."""
    # --8<-- [end:completion-extra-params]


class EmbeddingRequest(_Request):
    """`POST /v1/embeddings`: mean-pooled, L2-normalised last hidden states of the served base model."""

    input: Union[str, list[str], list[int], list[list[int]]]
    model: str = Field(min_length=1)
    encoding_format: Optional[Literal["float", "base64"]] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


# ------------------------------------------------------------------------------------------ responses


class UsageInfo(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Response):
    """Chat logprobs: one entry per generated token."""

    content: Optional[list[TokenLogprob]] = None


class CompletionLogprobs(_Response):
    """Legacy completions logprobs (parallel lists)."""

    text_offset: list[int] = []
    token_logprobs: list[Optional[float]] = []
    tokens: list[str] = []
    top_logprobs: list[Optional[dict[str, float]]] = []


class _AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None


class _ChatChoice(_Response):
    index: int
    message: _AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[_ChatChoice]
    usage: UsageInfo
    system_fingerprint: Optional[str] = None


class _Delta(_Response):
    role: Optional[str] = None
    content: Optional[str] = None


class _ChunkChoice(_Response):
    index: int
    delta: _Delta
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[_ChunkChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


class _CompletionChoice(_Response):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class CompletionResponse(_Response):
    """Both the full response and each streamed chunk of `/v1/completions` (as OpenAI does)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[_CompletionChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


class _Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    embedding: Union[list[float], str]
    index: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[_Embedding]
    model: str
    usage: UsageInfo


class ModelCard(_Response):
    """One entry of `/v1/models`: `root` is the resolved version, `parent` the base of an adapter."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmops"
    root: Optional[str] = None
    parent: Optional[str] = None
    # --- extensions ---
    kind: Optional[str] = None
    """`base`, `adapter` or `merged`."""


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]
