"""The engine contract: what the gateway needs from anything that generates tokens.

An engine serves one base model and any number of LoRA adapters of it. The gateway hands it token
ids (it owns the chat template through `encode_chat`), reads token events back as an async
iterator, and stops iterating to cancel. `transformers.py` is the in-process engine; `vllm.py`
(`AsyncLLM` + `LoRARequest`) and `upstream.py` (an OpenAI-compatible fleet) fit the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Hashable, Optional, Protocol, Sequence, runtime_checkable

__all__ = ["SamplingParams", "GenerationRequest", "TokenEvent", "Engine", "HFTokenizerMixin"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature` 0 (or None with a greedy model default) is greedy decoding.

    Engines check these the way vLLM's `SamplingParams` does and raise `GenerationRequestError` (a
    400 for the client) for what vLLM rejects; see `engines/sampling.py` for the exact rules.
    """

    max_tokens: int
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    logprobs: Optional[int] = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely alternatives."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens until `max_tokens` (benchmarks, load tests)."""
    min_p: Optional[float] = None
    """Drop tokens less likely than `min_p` times the most likely one (vLLM's `min_p`, in [0, 1])."""


@dataclass
class GenerationRequest:
    """One sequence to generate. `adapter` is the name of a loaded adapter, None for the base."""

    request_id: str
    """For logs only. Engines key sequences with ids they generate themselves, so a client-chosen id
    (`x-request-id`) can never collide with another request's or reach its output."""
    prompt_ids: list[int]
    params: SamplingParams
    adapter: Optional[str] = None
    stream: bool = True
    """False: nobody reads tokens early, so the engine may hand them over all at once at the end
    (each still stamped with its `time_ns`), sparing the event loop one wake-up per token."""
    group: Hashable = None
    """Sequences of one client request share a group (any hashable the gateway makes per request,
    e.g. `object()`; never a client-chosen value). Engines admit sequences fairly between groups, so
    a request with thousands of sequences cannot starve others. None: the sequence is its own group."""


@dataclass(frozen=True)
class TokenEvent:
    """One generated token. `finish_reason` is set on the last one (`stop`, `length`, `abort`).

    `finish_reason="error"` (with `token_id` -1) means this sequence failed inside the engine (for
    example its logits became non-finite); `extra["error"]` says why, for the log. Only that
    sequence ends: the others in the batch go on.
    """

    token_id: int
    logprob: Optional[float] = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: Optional[str] = None
    time_ns: int = 0
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """A running model server for one base model and its adapters."""

    max_context: int
    """Most tokens (prompt + generated) a sequence may hold."""

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with the model's chat template and a generation prompt."""

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""

    def token_text(self, token_id: int) -> str:
        """The text of one token as logprobs show it."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of `request`; closing the iterator early cancels the generation.

        Raises `GenerationRequestError` (a `GatewayError` 400 and a `ValueError`) on the first step,
        before anything is queued, for sampling values or prompt ids the engine refuses. A failure
        inside the engine ends the stream with a `finish_reason="error"` event instead.
        """

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Normalised mean-pooled embeddings of `texts` and the number of tokens read."""

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a LoRA adapter from `path` under `name` (a no-op when already loaded)."""

    def stats(self) -> dict[str, int]:
        """Counts: `running`, `waiting` sequences and `aborted` (cancelled before finishing) so far."""

    async def close(self) -> None:
        """Stop the engine and free its model."""


class HFTokenizerMixin:
    """The tokenizer half of the Engine protocol for engines holding a Hugging Face `self.tokenizer`."""

    tokenizer: object

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of `messages` under the model's chat template, with the generation prompt."""
        from llmops.errors import LlmopsError

        if not getattr(self.tokenizer, "chat_template", None):
            name = getattr(self, "model_path", None) or getattr(self, "source", "the model")
            raise LlmopsError(f"{name} has no chat template; use /v1/completions")
        try:
            ids = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
        except Exception as error:  # the template rejected the messages (e.g. an unsupported role)
            raise LlmopsError(f"messages: the model's chat template rejected them: {error}") from None
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a plain prompt (with the tokenizer's special tokens, e.g. BOS)."""
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """One token's text (special tokens kept, so logprobs name them)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)
