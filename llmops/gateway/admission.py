"""Request limits: every count and length a request carries is bounded before any work starts.

Both backends run these checks on the validated request, so a request that one backend refuses the
other refuses with the same 400. The result is a `Plan`: how many sequences the request generates,
the `max_tokens` each may reach, and the tokens its rate limit reserves at admission
(`sequences x max_tokens + prompt tokens`, refunded down to what was used at the finish).

A fleet does not tokenize, so prompt tokens are estimated for the reservation (a quarter of the
characters, plus the exact length of token-id prompts); the finish settles on the real usage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from llmops.gateway.errors import GatewayError

__all__ = ["Plan", "plan_generation", "plan_embeddings", "embedding_inputs", "estimate_tokens"]


@dataclass(frozen=True)
class Plan:
    """What an admitted request may cost."""

    sequences: int
    """Sequences generated: prompts x max(n, best_of)."""
    max_tokens: int
    """Tokens each sequence may generate."""
    reserve: int
    """Tokens the rate limit reserves at admission."""


def estimate_tokens(text: str) -> int:
    """A cheap upper-ish estimate of a text's token count (about 4 characters per token)."""
    return len(text) // 4 + 1


def _too_many(what: str, count: int, limit: int, param: str) -> GatewayError:
    return GatewayError(400, f"{what}: {count} exceeds this gateway's limit of {limit}", param=param,
                        code="limit_exceeded")


def _prompt_texts(request: Any, endpoint: str) -> list:
    """The prompts of a completion request (strings or token-id lists); one for chat."""
    if endpoint == "chat.completions":
        return [m.text() for m in request.messages or []]
    prompt = request.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise GatewayError(400, "prompt must be a non-empty string, list of strings or token ids", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def plan_generation(request: Any, limits: Any, endpoint: str, default_max_tokens: Optional[int] = None) -> Plan:
    """Check `request` (chat or text completion, registry prompt already rendered) against `limits`.

    Args:
        request: The validated `ChatCompletionRequest` or `CompletionRequest`.
        limits: `LimitsConfig`.
        endpoint: `chat.completions` or `completions`.
        default_max_tokens: `max_tokens` from the registry prompt's model config, if any.

    Raises:
        GatewayError: 400 naming the field and the limit.
    """
    if endpoint == "chat.completions" and not request.messages:
        raise GatewayError(400, "'messages' is a required property (or a registry `prompt` that supplies them)",
                           param="messages", code="missing_required_parameter")
    n = request.n or 1
    if n > limits.max_n:
        raise _too_many("n", n, limits.max_n, "n")
    best_of = request.declared("best_of") or n
    if best_of > limits.max_n:
        raise _too_many("best_of", best_of, limits.max_n, "best_of")
    stop = request.stop_list()
    if len(stop) > limits.max_stop:
        raise _too_many("stop: the number of stop sequences", len(stop), limits.max_stop, "stop")
    longest = max(map(len, stop), default=0)
    if longest > limits.max_stop_length:
        raise _too_many("stop: a stop sequence's length", longest, limits.max_stop_length, "stop")
    prompts = _prompt_texts(request, endpoint)
    if endpoint == "completions" and len(prompts) > limits.max_prompts:
        raise _too_many("prompt: the number of prompts", len(prompts), limits.max_prompts, "prompt")
    sequences = (len(prompts) if endpoint == "completions" else 1) * max(n, best_of)
    if sequences > limits.max_sequences:
        raise _too_many("the number of sequences (prompts x n)", sequences, limits.max_sequences, "n")
    requested = request.requested_max_tokens()
    max_tokens = requested or default_max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        param = "max_completion_tokens" if request.declared("max_completion_tokens") else "max_tokens"
        raise _too_many(param, max_tokens, limits.max_tokens, param)
    prompt_tokens = sum(estimate_tokens(p) if isinstance(p, str) else len(p) for p in prompts)
    return Plan(sequences, max_tokens, sequences * max_tokens + prompt_tokens)


def embedding_inputs(request: Any) -> list:
    """The inputs of an embeddings request: strings and token-id lists.

    Raises:
        GatewayError: 400 for an empty input or an empty string.
    """
    data = request.input
    if isinstance(data, str):
        items: list = [data]
    elif data and isinstance(data[0], int):
        items = [data]
    else:
        items = list(data)
    if not items or any(len(item) == 0 for item in items):
        raise GatewayError(400, "input must be a non-empty string, list of strings or token ids, without empty "
                           "items", param="input")
    return items


def plan_embeddings(request: Any, limits: Any) -> Plan:
    """Check an embeddings request's input count and (estimated) tokens against `limits`."""
    items = embedding_inputs(request)
    if len(items) > limits.max_embedding_inputs:
        raise _too_many("input: the number of inputs", len(items), limits.max_embedding_inputs, "input")
    tokens = sum(len(item.encode("utf-8")) // 4 + 1 if isinstance(item, str) else len(item) for item in items)
    if tokens > limits.max_embedding_tokens:
        raise _too_many("input: the number of input tokens", tokens, limits.max_embedding_tokens, "input")
    return Plan(len(items), 0, tokens)
