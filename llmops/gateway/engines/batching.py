"""Continuous batching over a padded KV cache, with a different LoRA adapter per row.

Why not transformers' `ContinuousBatchingManager`: it packs every sequence into one ragged row, and
peft's mixed-adapter forward (`adapter_names=[...]`) selects adapters by *batch row*, so the two do
not combine; it also takes one generation config for all requests. This loop keeps a left-padded
batch instead: new requests are prefilled together and their KV cache is concatenated onto the
running batch at the next step (iteration-level scheduling), finished or cancelled rows are dropped
at once, and each row carries its own adapter, sampling parameters and random generator.

Everything here runs on the engine's single worker thread; nothing is thread-safe by itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from llmops.gateway.engines.base import GenerationRequest, TokenEvent

__all__ = ["Sequence", "RunningBatch", "pick_tokens"]

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class Sequence:
    """One request being generated."""

    request: GenerationRequest
    emit: Callable[[TokenEvent], None]
    generator: Optional[torch.Generator] = None
    generated: list[int] = field(default_factory=list)
    seen: Optional[torch.Tensor] = None  # token ids for the repetition penalty
    cancelled: bool = False

    @property
    def adapter_name(self) -> str:
        return self.request.adapter or BASE_ADAPTER


def _left_pad(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class RunningBatch:
    """The sequences decoding together, their shared (left-padded) KV cache and attention mask."""

    def __init__(self, model: Any, device: torch.device, pad_id: int, eos_ids: set[int], max_context: int):
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.eos_ids = eos_ids
        self.max_context = max_context
        self.seqs: list[Sequence] = []
        self.cache = None
        self.mask: Optional[torch.Tensor] = None  # (B, L) 1 = real token
        self.positions: Optional[torch.Tensor] = None  # (B,) position id of the next token
        self.last: Optional[torch.Tensor] = None  # (B,) last sampled token
        # transformers 5.2x renamed `past_key_values` to `cache`; take whichever this model's forward has.
        import inspect

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def __len__(self) -> int:
        return len(self.seqs)

    def _adapter_kwargs(self, seqs: list[Sequence]) -> dict[str, Any]:
        """Forward kwargs that select each row's adapter.

        A plain model has no adapters. A batch on one adapter runs it as peft's active adapter: the
        per-row `adapter_names` path re-walks every module on each forward (about 1 ms per step for the
        tiny model), so it is kept for batches that really mix adapters or mix adapters and the base.
        """
        if not hasattr(self.model, "peft_config"):
            return {}
        names = {s.adapter_name for s in seqs}
        if len(names) == 1 and BASE_ADAPTER not in names:
            (name,) = names
            if self.model.active_adapter != name:
                self.model.set_adapter(name)
            return {}
        return {"adapter_names": [s.adapter_name for s in seqs]}

    # ------------------------------------------------------------------------------------ prefill

    @torch.inference_mode()
    def add(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs` together, sample their first tokens and join them to the batch."""
        from transformers import DynamicCache

        lengths = [len(s.request.prompt_ids) for s in seqs]
        width = max(lengths)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, (seq, length) in enumerate(zip(seqs, lengths)):
            ids[row, width - length:] = torch.tensor(seq.request.prompt_ids, dtype=torch.long)
            mask[row, width - length:] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self._cache_kw: cache}, logits_to_keep=1, **self._adapter_kwargs(seqs),
        )
        for seq in seqs:
            seq.seen = torch.tensor(sorted(set(seq.request.prompt_ids)), dtype=torch.long, device=self.device)
        tokens = self._finish_step(seqs, out.logits[:, -1, :])
        self._merge(seqs, cache, mask, positions[:, -1] + 1, tokens)

    def _merge(self, seqs, cache, mask, positions, tokens) -> None:
        if not self.seqs:
            self.seqs, self.cache, self.mask, self.positions, self.last = list(seqs), cache, mask, positions, tokens
        else:
            width = max(self.mask.shape[1], mask.shape[1])
            grow_old, grow_new = width - self.mask.shape[1], width - mask.shape[1]
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_left_pad(old.keys, grow_old, 2), _left_pad(new.keys, grow_new, 2)], dim=0)
                old.values = torch.cat([_left_pad(old.values, grow_old, 2), _left_pad(new.values, grow_new, 2)], dim=0)
            self.mask = torch.cat([_left_pad(self.mask, grow_old, 1), _left_pad(mask, grow_new, 1)], dim=0)
            self.positions = torch.cat([self.positions, positions])
            self.last = torch.cat([self.last, tokens])
            self.seqs.extend(seqs)
        self._drop_finished()

    # ------------------------------------------------------------------------------------- decode

    @torch.inference_mode()
    def step(self) -> None:
        """Decode one token for every running sequence."""
        self._drop_finished()
        if not self.seqs:
            return
        ones = self.mask.new_ones((len(self.seqs), 1))
        self.mask = torch.cat([self.mask, ones], dim=1)
        out = self.model(
            input_ids=self.last[:, None], attention_mask=self.mask, position_ids=self.positions[:, None],
            use_cache=True, **{self._cache_kw: self.cache}, **self._adapter_kwargs(self.seqs),
        )
        self.positions = self.positions + 1
        self.last = self._finish_step(self.seqs, out.logits[:, -1, :])
        self._drop_finished()

    def _finish_step(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token, emit it, and mark rows that are done."""
        tokens, logprobs = pick_tokens(logits, seqs)
        now = time.time_ns()
        for row, (seq, token) in enumerate(zip(seqs, tokens.tolist())):
            seq.generated.append(token)
            if seq.request.params.repetition_penalty not in (None, 1.0):
                seq.seen = torch.cat([seq.seen, tokens[row:row + 1]])
            finish = None
            if token in self.eos_ids and not seq.request.params.ignore_eos:
                finish = "stop"
            elif len(seq.generated) >= seq.request.params.max_tokens:
                finish = "length"
            elif len(seq.request.prompt_ids) + len(seq.generated) >= self.max_context:
                finish = "length"
            chosen, top = logprobs[row] if logprobs is not None and logprobs[row] is not None else (None, ())
            seq.emit(TokenEvent(token, chosen, top, finish, now))
            if finish is not None:
                seq.cancelled = True  # done: dropped from the batch below
        return tokens

    def _drop_finished(self) -> None:
        keep = [row for row, seq in enumerate(self.seqs) if not seq.cancelled]
        if len(keep) == len(self.seqs):
            return
        if not keep:
            self.seqs, self.cache, self.mask, self.positions, self.last = [], None, None, None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.seqs = [self.seqs[row] for row in keep]
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        # Columns that are padding in every remaining row cost attention time for nothing.
        start = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def pick_tokens(logits: torch.Tensor, seqs: list[Sequence]):
    """Choose one token per row under each row's sampling parameters.

    Returns `(tokens, logprobs)`: tokens is a (B,) long tensor; logprobs is None when no row asked for
    them, else a list with, per row, None or `(chosen_logprob, ((token, logprob), ...))` computed from
    the model's unmodified distribution (as OpenAI reports them).
    """
    logits = logits.float()
    tokens = logits.argmax(dim=-1)
    if all(not s.request.params.temperature and s.request.params.repetition_penalty in (None, 1.0)
           and s.request.params.logprobs is None for s in seqs):
        return tokens, None  # all greedy: the common serving case needs nothing per row
    want_logprobs = any(s.request.params.logprobs is not None for s in seqs)
    raw_logprobs = F.log_softmax(logits, dim=-1) if want_logprobs else None
    for row, seq in enumerate(seqs):
        params = seq.request.params
        row_logits = logits[row]
        if params.repetition_penalty not in (None, 1.0) and seq.seen is not None and seq.seen.numel():
            scores = row_logits[seq.seen]
            row_logits = row_logits.clone()
            row_logits[seq.seen] = torch.where(
                scores < 0, scores * params.repetition_penalty, scores / params.repetition_penalty
            )
            tokens[row] = row_logits.argmax()
        if not params.temperature:  # None or 0: greedy
            continue
        row_logits = row_logits / params.temperature
        if params.top_k and 0 < params.top_k < row_logits.numel():
            kth = torch.topk(row_logits, params.top_k).values[-1]
            row_logits = row_logits.masked_fill(row_logits < kth, float("-inf"))
        probs = torch.softmax(row_logits, dim=-1)
        if params.top_p is not None and params.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            outside = sorted_probs.cumsum(0) - sorted_probs > params.top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        tokens[row] = torch.multinomial(probs, 1, generator=seq.generator)[0]
    if not want_logprobs:
        return tokens, None
    result = []
    for row, seq in enumerate(seqs):
        k = seq.request.params.logprobs
        if k is None:
            result.append(None)
            continue
        chosen = float(raw_logprobs[row, tokens[row]])
        top = ()
        if k > 0:
            values, indices = torch.topk(raw_logprobs[row], k)
            top = tuple((int(i), float(v)) for i, v in zip(indices, values))
        result.append((chosen, top))
    return tokens, result
