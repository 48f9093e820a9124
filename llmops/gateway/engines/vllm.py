"""The `vllm` engine: an in-process vLLM `AsyncLLM`, one `LoRARequest` per registry adapter version.

vLLM is the optional extra `llmops[vllm]`; this module imports it only in `VllmEngine.start()`, so it
imports (and its pure parts are tested) without vLLM. The gateway keeps owning the chat template,
stop strings and detokenization (`serving.py`), so vLLM gets token ids and returns token ids
(`detokenize=False`, `RequestOutputKind.DELTA`): the same contract as the `transformers` engine.

Adapters get stable integer ids (vLLM needs a globally unique `lora_int_id` per adapter): derived
from the adapter's name, so a version keeps its id across restarts, with the next free id on a
collision. Closing a `generate` iterator early aborts the request in vLLM (the client went away).
An adapter counts as loaded only once vLLM's `add_lora` succeeded. The tokenizer is read at the
same revision as the weights, so a hub model pinned to a commit cannot pair its weights with a
newer tokenizer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Sequence

from llmops.gateway.engines.base import GenerationRequest, HFTokenizerMixin, SamplingParams, TokenEvent

__all__ = ["LoraSlot", "LoraBook", "sampling_kwargs", "VllmEngine", "VLLM_MAX_LORA_RANKS", "check_max_lora_rank", "engine_args"]

_log = logging.getLogger(__name__)
_ID_SPACE = 2**31 - 1

# vLLM validates `max_lora_rank` against a closed set: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128,
# 256, 320, 512]` in vllm/config/lora.py (LoRAConfig.max_lora_rank); any other value fails engine start.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def check_max_lora_rank(rank: int) -> int:
    """`rank` when vLLM accepts it as `max_lora_rank`.

    Raises:
        ValueError: another value, with the allowed ones and the nearest that fits `rank`.
    """
    if rank in VLLM_MAX_LORA_RANKS:
        return rank
    allowed = ", ".join(map(str, VLLM_MAX_LORA_RANKS))
    larger = [r for r in VLLM_MAX_LORA_RANKS if r > rank]
    hint = f"; the smallest that serves rank-{rank} adapters is {larger[0]}" if larger else ""
    raise ValueError(f"max_lora_rank {rank} is not one vLLM accepts: choose one of {allowed}{hint}")


def engine_args(source: str, revision: Optional[str], options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of vLLM's `AsyncEngineArgs`: weights and tokenizer from the same source and revision."""
    return {"model": source, "revision": revision, "tokenizer": source, "tokenizer_revision": revision, **options}


@dataclass(frozen=True)
class LoraSlot:
    """What a `vllm.lora.request.LoRARequest` is built from."""

    name: str
    int_id: int
    path: str


class LoraBook:
    """Adapter name -> (stable integer id, path); the bookkeeping behind vLLM's LoRARequests."""

    def __init__(self) -> None:
        self._slots: dict[str, LoraSlot] = {}
        self._ids: set[int] = set()

    def add(self, name: str, path: str | Path) -> LoraSlot:
        """Register `name` (idempotent for the same path; a new path keeps the id, vLLM reloads it)."""
        current = self._slots.get(name)
        if current is not None:
            if current.path != str(path):
                current = LoraSlot(name, current.int_id, str(path))
                self._slots[name] = current
            return current
        int_id = zlib.crc32(name.encode()) % _ID_SPACE + 1
        while int_id in self._ids:
            int_id = int_id % _ID_SPACE + 1
        self._ids.add(int_id)
        slot = LoraSlot(name, int_id, str(path))
        self._slots[name] = slot
        return slot

    async def load(self, name: str, path: str | Path, add: Callable[[LoraSlot], Awaitable[Any]]) -> LoraSlot:
        """Add `name` and have the engine load it with `add(slot)`; on failure forget it again.

        `add` follows `AsyncLLM.add_lora`: it returns False when the engine core did not add the
        adapter and raises when loading fails.

        Raises:
            RuntimeError: the load failed (the message says why); `name` is not registered afterwards.
        """
        if name in self:
            return self.get(name)
        slot = self.add(name, path)
        try:
            added = await add(slot)
            problem = None if added is not False else "vLLM did not add it"
        except Exception as error:  # noqa: BLE001 - vLLM raises ValueError, RuntimeError or its own types
            problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            self.remove(name)
            raise RuntimeError(problem)
        return slot

    def get(self, name: str) -> LoraSlot:
        """The slot of a loaded adapter.

        Raises:
            KeyError: `name` was never added.
        """
        return self._slots[name]

    def remove(self, name: str) -> Optional[LoraSlot]:
        """Forget `name` (its id is freed)."""
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._ids.discard(slot.int_id)
        return slot

    def __contains__(self, name: object) -> bool:
        return name in self._slots

    def __len__(self) -> int:
        return len(self._slots)


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments of `vllm.SamplingParams` for one choice of a gateway request.

    Unset fields are left out (vLLM's defaults apply); temperature None means greedy, as for the
    other engines (the serving layer already turned it into 1.0 for models that sample by default).
    Detokenization and stop strings stay in the gateway.

    The values pass the same checks as on the transformers engine first (`sampling.check_sampling`,
    vLLM's own rules): a temperature below 1e-5 is sent as 0 (greedy) and the repetition penalty is
    clamped to [1e-20, 1e20], since vLLM keeps penalties in float32, where 1e-300 is 0 and divides to inf.

    Raises:
        GenerationRequestError: a value vLLM rejects (a 400 naming the field).
    """
    from llmops.gateway.engines.sampling import check_sampling

    checked = check_sampling(params, vocab_size=2**31)  # vLLM itself bounds logprobs (max_logprobs)
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": 0.0 if checked.greedy else checked.temperature,
        "ignore_eos": bool(params.ignore_eos),
        "detokenize": False,
        "skip_special_tokens": True,
    }
    if params.top_p is not None:
        kwargs["top_p"] = float(params.top_p)
    if params.top_k is not None and params.top_k > 0:
        kwargs["top_k"] = int(params.top_k)
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = checked.repetition_penalty
    if params.min_p is not None:
        kwargs["min_p"] = float(params.min_p)
    if checked.seed is not None:
        kwargs["seed"] = checked.seed
    if params.logprobs is not None:
        kwargs["logprobs"] = int(params.logprobs)
    return kwargs


class VllmEngine(HFTokenizerMixin):
    """Serve one base model (a local folder or hub id) with vLLM's `AsyncLLM` and LoRA adapters.

    Args:
        source: Model folder or hub id.
        revision: Hub revision.
        dtype: `auto`, `bfloat16`, `float16`, `float32`.
        max_loras: Adapters in one batch (`--max-loras`).
        max_lora_rank: Largest adapter rank (`--max-lora-rank`).
        gpu_memory_utilization: Share of GPU memory vLLM may take.
        max_model_len: Context length (None: the model's).
        engine_kwargs: More `AsyncEngineArgs` fields, passed as is.

    Raises:
        ValueError: `max_lora_rank` is not a value vLLM accepts (see `check_max_lora_rank`).
        MissingExtraError: vLLM is not installed (`pip install 'llmops[vllm]'`).
    """

    def __init__(self, source: str, revision: Optional[str] = None, dtype: str = "auto", max_loras: int = 8,
                 max_lora_rank: int = 64, gpu_memory_utilization: float = 0.9, max_model_len: Optional[int] = None,
                 engine_kwargs: Optional[dict[str, Any]] = None):
        self.source = source
        self.revision = revision
        self.options = dict(dtype=dtype, enable_lora=True, max_loras=max_loras, max_lora_rank=check_max_lora_rank(max_lora_rank),
                            gpu_memory_utilization=gpu_memory_utilization, **(engine_kwargs or {}))
        if max_model_len:
            self.options["max_model_len"] = max_model_len
        self.loras = LoraBook()
        self.running = 0
        self.aborted = 0
        self._keys = itertools.count(1)  # vLLM request ids: made here, never the client's x-request-id
        self._engine: Any = None
        self.start()

    def start(self) -> None:
        """Import vLLM, load the tokenizer and start the engine."""
        from llmops.extras import require

        require("vllm", "the vllm engine (engine.kind: vllm)")
        from transformers import AutoTokenizer
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(self.source, revision=self.revision)
        args = AsyncEngineArgs(**engine_args(self.source, self.revision, self.options))
        self._engine = AsyncLLM.from_engine_args(args)
        self.max_context = int(self._engine.model_config.max_model_len)
        generation = getattr(self._engine.model_config, "get_diff_sampling_param", lambda: {})()
        self.samples_by_default = bool(generation.get("temperature", 0))

    # ------------------------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of `request`; closing the iterator early aborts it in vLLM."""
        import time

        from vllm import SamplingParams as VllmSamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        params = VllmSamplingParams(output_kind=RequestOutputKind.DELTA, **sampling_kwargs(request.params))
        lora = None
        if request.adapter is not None:
            slot = self.loras.get(request.adapter)
            lora = LoRARequest(slot.name, slot.int_id, slot.path)
        finished = False
        key = f"llmops-{next(self._keys)}"
        self.running += 1
        try:
            stream = self._engine.generate({"prompt_token_ids": list(request.prompt_ids)}, params,
                                           key, lora_request=lora)
            async for output in stream:
                completion = output.outputs[0]
                ids = list(completion.token_ids)
                now = time.time_ns()
                for position, token_id in enumerate(ids):
                    last = output.finished and position == len(ids) - 1
                    logprob, top = None, ()
                    if completion.logprobs and position < len(completion.logprobs):
                        entry = completion.logprobs[position]
                        chosen = entry.get(token_id)
                        logprob = None if chosen is None else float(chosen.logprob)
                        top = tuple(sorted(((t, float(lp.logprob)) for t, lp in entry.items()),
                                           key=lambda item: -item[1]))
                    finish = _finish_reason(completion.finish_reason) if last else None
                    yield TokenEvent(int(token_id), logprob, top, finish, now)
                if output.finished:
                    finished = True
                    if not ids:  # finished without a new token (rare): close the choice anyway
                        yield TokenEvent(self.tokenizer.eos_token_id or 0, None, (),
                                         _finish_reason(completion.finish_reason), now)
                    return
        finally:
            self.running -= 1
            if not finished:
                self.aborted += 1
                await self._engine.abort(key)

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Not offered by this engine (serve an embedding model with `transformers`)."""
        from llmops.gateway.errors import GatewayError

        raise GatewayError(400, "embeddings are not supported by the vllm engine", param="model")

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a LoRA adapter into vLLM under `name` (no-op when loaded).

        Raises:
            GatewayError: 502 `adapter_load_failed` when vLLM refuses or fails to load it; the adapter
                is then not registered, so the next request for it tries again.
        """
        from vllm.lora.request import LoRARequest

        from llmops.gateway.errors import GatewayError

        try:
            await self.loras.load(name, path, lambda slot: self._engine.add_lora(LoRARequest(slot.name, slot.int_id, slot.path)))
        except RuntimeError as error:
            raise GatewayError(502, f"adapter {name} from {path} failed to load in vLLM ({error})",
                               code="adapter_load_failed") from None

    def stats(self) -> dict[str, int]:
        """Counts: running requests, adapters registered, aborted requests."""
        return {"running": self.running, "waiting": 0, "aborted": self.aborted, "adapters": len(self.loras)}

    async def close(self) -> None:
        """Shut the engine down."""
        if self._engine is not None:
            await asyncio.to_thread(self._engine.shutdown)
            self._engine = None


def _finish_reason(reason: Optional[str]) -> str:
    return reason if reason in ("stop", "length", "abort") else "stop"
