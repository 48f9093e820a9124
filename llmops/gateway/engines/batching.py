"""Continuous batching over a padded KV cache, with a different LoRA adapter per row.

Why not transformers' `ContinuousBatchingManager`: it packs every sequence into one ragged row, and
peft's mixed-adapter forward (`adapter_names=[...]`) selects adapters by *batch row*, so the two do
not combine; it also takes one generation config for all requests. This loop keeps a left-padded
batch instead: new requests are prefilled together and their KV cache is concatenated onto the
running batch at the next step (iteration-level scheduling), finished or cancelled rows are dropped
at once, and each row carries its own adapter, sampling parameters and random generator.

A row that fails (non-finite logits, a sampling error) ends only its own sequence with an `error`
event; the rest of the batch decodes on. A preempted row leaves the batch and is later prefilled
again from its prompt plus the tokens it already generated (`add` handles both).

Everything here runs on the engine's single worker thread; nothing is thread-safe by itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import torch

from llmops.gateway.engines.base import GenerationRequest, TokenEvent
from llmops.gateway.engines.sampler import pick_tokens
from llmops.gateway.engines.sampling import RowSampling

__all__ = ["Sequence", "RunningBatch"]

_log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class Sequence:
    """One sequence being generated, keyed by `key`, which the engine makes (never a client's id)."""

    request: GenerationRequest
    emit: Callable[[TokenEvent], None]
    key: int = 0
    sampling: RowSampling = field(default_factory=RowSampling)
    generator: Optional[torch.Generator] = None
    generated: list[int] = field(default_factory=list)
    seen: Optional[torch.Tensor] = None  # token ids for the repetition penalty
    cancelled: bool = False  # cancelled or finished: leaves the batch at the next drop
    queued: bool = False  # waiting in the scheduler
    recomputed: bool = False  # re-queued once after a failed decoding step

    @property
    def adapter_name(self) -> str:
        return self.request.adapter or BASE_ADAPTER

    @property
    def group(self) -> Hashable:
        """The client request this sequence belongs to (itself when the gateway gave none)."""
        return self.request.group if self.request.group is not None else self

    def fail(self, reason: str) -> None:
        """End this sequence with an `error` event; nothing else in the batch is touched."""
        _log.warning("sequence %d (request %s) failed: %s", self.key, self.request.request_id, reason)
        self.cancelled = True
        self.emit(TokenEvent(-1, finish_reason="error", time_ns=time.time_ns(), extra={"error": reason}))


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

    def running_groups(self) -> Counter:
        """Running sequences per group."""
        return Counter(seq.group for seq in self.seqs if not seq.cancelled)

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
        """Prefill `seqs` together, sample their next tokens and join them to the batch.

        A sequence that was preempted is prefilled with its prompt and what it generated so far.
        If the forward pass raises, the running batch is left as it was (the caller decides who fails).
        """
        from transformers import DynamicCache

        inputs = [list(s.request.prompt_ids) + s.generated for s in seqs]
        width = max(map(len, inputs))
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
            mask[row, width - len(tokens):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{self._cache_kw: cache}, logits_to_keep=1, **self._adapter_kwargs(seqs),
        )
        for seq, tokens in zip(seqs, inputs):
            seq.seen = torch.tensor(sorted(set(tokens)), dtype=torch.long, device=self.device)
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

    def clear(self) -> list[Sequence]:
        """Empty the batch (its cache may be inconsistent after a failed step); the sequences it held."""
        seqs = self.seqs
        self.seqs, self.cache, self.mask, self.positions, self.last = [], None, None, None, None
        return seqs

    def preempt(self, groups: list[Hashable]) -> list[Sequence]:
        """Take one sequence out of the batch per entry of `groups` (a group may repeat), unfinished.

        From each group, the sequence that has generated least goes (the cheapest to prefill again).
        Returns them, for the scheduler to queue again.
        """
        leaving: list[Sequence] = []
        for group in groups:
            candidates = [s for s in self.seqs if s.group == group and not s.cancelled and s not in leaving]
            if candidates:
                leaving.append(min(candidates, key=lambda s: len(s.generated)))
        ids = set(map(id, leaving))
        self._keep([row for row, seq in enumerate(self.seqs) if id(seq) not in ids])
        return leaving

    def _finish_step(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """Pick each row's next token, emit it, and mark rows that are done (or failed)."""
        picked = pick_tokens(logits, [(s.sampling, s.seen, s.generator) for s in seqs])
        tokens = picked.tensor
        logprobs = picked.logprobs
        now = time.time_ns()
        for row, (seq, token) in enumerate(zip(seqs, picked.tokens)):
            if row in picked.failures:
                seq.fail(picked.failures[row])
                continue
            seq.generated.append(token)
            if seq.sampling.repetition_penalty != 1.0:
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
        self._keep([row for row, seq in enumerate(self.seqs) if not seq.cancelled])

    def _keep(self, keep: list[int]) -> None:
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
