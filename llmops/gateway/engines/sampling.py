"""Sampling parameters checked the way vLLM checks them, before a sequence is queued.

The rules follow vLLM's `vllm/sampling_params.py` (`SamplingParams.__post_init__` and `_verify_args`,
read at commit 00388f6573ccfcffad607b8c9ecdf341a4669ceb):

- rejected (a 400): temperature not finite or outside [0, 2]; top_p outside (0, 1]; top_k below -1;
  min_p outside [0, 1]; repetition_penalty not finite or <= 0; max_tokens below 1; logprobs below -1;
- greedy: temperature below `_SAMPLING_EPS` (1e-5), which also turns top_p, top_k and min_p off;
- raised: a temperature in [1e-5, 1e-2) becomes `_MAX_TEMP` (1e-2), because dividing logits by less
  makes inf/NaN. vLLM raises every temperature in (0, 1e-2) to 1e-2 and samples; we take the part
  below 1e-5 as greedy, as vLLM's sampler treats what falls under `_SAMPLING_EPS` (the two differ by
  the noise of a 1e-2 temperature);
- `top_k` -1 means off, like 0; `seed` -1 means no seed; `logprobs` -1 means the whole vocabulary.

vLLM leaves `repetition_penalty` unbounded above 0, and `1e-300` underflows to 0 in float32, so
dividing by it gives inf (and 0/0 NaN). We clamp the penalty to [1e-20, 1e20]: beyond that range
the penalty already decides the order of seen and unseen tokens, and logits of any sane model times
1e20 stay finite in float32.

`sampler.pick_tokens` applies the result, one batch at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

from llmops.gateway.errors import GatewayError

__all__ = ["SAMPLING_EPS", "MIN_TEMPERATURE", "GenerationRequestError", "RowSampling", "check_sampling",
           "check_prompt"]

SAMPLING_EPS = 1e-5  # vLLM `_SAMPLING_EPS`: a temperature below this is greedy
MIN_TEMPERATURE = 1e-2  # vLLM `_MAX_TEMP`: smaller temperatures are raised to it
_PENALTY_RANGE = (1e-20, 1e20)
_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


class GenerationRequestError(GatewayError, ValueError):
    """A generation request the engine refuses (the client's mistake): answered as a 400 naming `param`."""

    def __init__(self, message: str, param: str):
        super().__init__(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class RowSampling:
    """One sequence's sampling after the checks: exactly what the sampler applies."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1.0: off
    logprobs: Optional[int] = None  # None: none; k: the chosen token's and the k most likely
    seed: Optional[int] = None

    @cached_property  # read for every row at every step
    def plain_greedy(self) -> bool:
        """Greedy with nothing per row to compute (the common serving case)."""
        return self.greedy and self.repetition_penalty == 1.0 and self.logprobs is None


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GenerationRequestError(f"{name} must be a number, got {type(value).__name__}", name)
    try:
        value = float(value)
    except OverflowError:  # an int too large for a float
        raise GenerationRequestError(f"{name} must be a finite number, got an integer too large", name) from None
    if not math.isfinite(value):
        raise GenerationRequestError(f"{name} must be a finite number, got {value}", name)
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenerationRequestError(f"{name} must be an integer, got {type(value).__name__}", name)
    return value


def check_sampling(params: Any, vocab_size: int) -> RowSampling:
    """Check `params` (a `SamplingParams`) as vLLM does and return what the sampler applies.

    Raises:
        GenerationRequestError: a value vLLM rejects (the message names the field and the range).
    """
    if _integer("max_tokens", params.max_tokens) < 1:
        raise GenerationRequestError(f"max_tokens must be at least 1, got {params.max_tokens}", "max_tokens")
    temperature = 0.0 if params.temperature is None else _number("temperature", params.temperature)
    if not 0.0 <= temperature <= 2.0:
        raise GenerationRequestError(f"temperature must be in [0, 2], got {temperature}", "temperature")
    top_p = 1.0 if params.top_p is None else _number("top_p", params.top_p)
    if not 0.0 < top_p <= 1.0:
        raise GenerationRequestError(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = 0 if params.top_k is None else _integer("top_k", params.top_k)
    if top_k < -1:
        raise GenerationRequestError(f"top_k must be 0 or -1 (off), or at least 1, got {top_k}", "top_k")
    min_p = 0.0 if getattr(params, "min_p", None) is None else _number("min_p", params.min_p)
    if not 0.0 <= min_p <= 1.0:
        raise GenerationRequestError(f"min_p must be in [0, 1], got {min_p}", "min_p")
    penalty = 1.0 if params.repetition_penalty is None else _number("repetition_penalty", params.repetition_penalty)
    if penalty <= 0.0:
        raise GenerationRequestError(f"repetition_penalty must be greater than 0, got {penalty}",
                                     "repetition_penalty")
    seed = None if params.seed is None else _integer("seed", params.seed)
    if seed == -1:
        seed = None
    if seed is not None and not _SEED_RANGE[0] <= seed < _SEED_RANGE[1]:
        raise GenerationRequestError("seed must be in [-2**63, 2**64)", "seed")
    logprobs = None if params.logprobs is None else _integer("logprobs", params.logprobs)
    if logprobs is not None and logprobs < -1:
        raise GenerationRequestError(f"logprobs must be -1 (all), 0 or more, got {logprobs}", "logprobs")
    if logprobs is not None and (logprobs == -1 or logprobs > vocab_size):
        logprobs = vocab_size
    penalty = min(max(penalty, _PENALTY_RANGE[0]), _PENALTY_RANGE[1])
    if temperature < SAMPLING_EPS:
        return RowSampling(greedy=True, repetition_penalty=penalty, logprobs=logprobs)
    return RowSampling(
        greedy=False, temperature=max(temperature, MIN_TEMPERATURE),
        top_k=0 if top_k == -1 or top_k >= vocab_size else top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=penalty, logprobs=logprobs, seed=seed,
    )


def check_prompt(prompt_ids: Any, vocab_size: int, max_context: int) -> None:
    """Check that `prompt_ids` is a non-empty list of token ids in the vocabulary with room to generate.

    Raises:
        GenerationRequestError: with `param` "prompt".
    """
    if not prompt_ids:
        raise GenerationRequestError("the prompt is empty", "prompt")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size for t in prompt_ids):
        raise GenerationRequestError(f"prompt token ids must be integers in [0, {vocab_size})", "prompt")
    if len(prompt_ids) >= max_context:
        raise GenerationRequestError(f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                                     f"{max_context}", "prompt")
