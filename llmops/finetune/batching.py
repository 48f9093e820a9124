"""Which examples each optimizer step trains on, how they are split across processes and
micro-batches, and how a micro-batch becomes tensors (packed or padded).

The data order is a pure function of (seed, epoch): the examples form one stream, epoch after
epoch, each epoch a seeded permutation; optimizer step k takes the next `global_batch` examples of
the stream. So the data position of a checkpoint is just the step number, and a run with 2
processes x batch 4 trains on exactly the examples of a run with 1 process x batch 8.

Inside a step the global batch is sorted by length and cut into `processes x accumulation`
micro-batches: that changes nothing in the gradient (the loss is a sum over the step's trained
tokens divided by their count) but keeps similar lengths together, so little padding is left.
With packing, each micro-batch's examples are packed (first-fit decreasing) into rows of at most
`max_seq_len` tokens; `position_ids` restart at 0 for every example, which transformers turns into
a block-diagonal causal mask (no attention across examples) for sdpa/eager and into varlen
kernels for FlashAttention.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from llmops.finetune.data import IGNORE_INDEX, Example

__all__ = ["StepPlan", "DataPlan", "pack_rows", "collate"]


@dataclass(frozen=True)
class StepPlan:
    """The examples of one optimizer step."""

    step: int
    indices: list[int]
    epoch: float
    """Examples consumed after this step, in epochs."""
    trained_tokens: int
    """Trained tokens of the whole global batch (the loss normaliser, equal on every process)."""


class DataPlan:
    """The deterministic example stream of a training run.

    Args:
        examples: the training examples.
        global_batch: examples per optimizer step over all processes and micro-batches.
        seed: seeds each epoch's permutation.
        epochs: passes over the data; the last step takes what is left. Ignored with `max_steps`.
        max_steps: a fixed number of steps (the stream repeats the data as needed).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        global_batch: int,
        seed: int,
        epochs: int = 1,
        max_steps: int | None = None,
        shuffle: bool = True,
    ):
        self.examples = examples
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self._end = None if max_steps is not None else epochs * len(examples)
        self.total_steps = max_steps if max_steps is not None else math.ceil(self._end / global_batch)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        order = self._orders.get(epoch)
        if order is None:
            order = list(range(len(self.examples)))
            if self.shuffle:
                random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # only the current epoch is needed
        return order

    def step(self, step: int) -> StepPlan:
        """The plan of optimizer step `step` (0-based)."""
        n = len(self.examples)
        start = step * self.global_batch
        end = start + self.global_batch
        if self._end is not None:
            end = min(end, self._end)
        indices = [self._order(position // n)[position % n] for position in range(start, end)]
        trained = sum(self.examples[i].trained_tokens for i in indices)
        return StepPlan(step, indices, end / n, trained)

    def micro_batches(self, plan: StepPlan, rank: int, world: int, accumulation: int) -> list[list[int]]:
        """This process's micro-batches of a step: `accumulation` lists of example indices (some may be empty)."""
        slots = world * accumulation
        ordered = sorted(plan.indices, key=lambda i: (-self.examples[i].length, i))
        size = math.ceil(len(ordered) / slots) if ordered else 0
        chunks = [ordered[s * size:(s + 1) * size] for s in range(slots)]
        # Slot m * world + rank: every process gets a similar share of long and short chunks.
        return [chunks[m * world + rank] for m in range(accumulation)]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of example positions into rows of at most `capacity` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for index in order:
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def collate(examples: Sequence[Example], pad_id: int, packing: bool, row_capacity: int):
    """Tensors of one micro-batch: `input_ids`, `position_ids`, `attention_mask` (None when packed),
    `shift_labels` (the label of the *next* token, -100 across example boundaries), `keep` (the
    positions whose logits are needed, i.e. that predict a trained token) and `tokens` (non-padding
    tokens).

    With `packing`, examples are packed into rows of at most `row_capacity` tokens, but never longer
    than the micro-batch's longest example when `row_capacity` is 0: with sdpa/eager attention a
    row costs quadratically in its length, so rows as long as the longest example (instead of
    `max_seq_len`) remove the padding without making attention dearer. FlashAttention's varlen
    kernels cost per example, so they get full `max_seq_len` rows.
    """
    import torch

    if packing:
        capacity = row_capacity or max(e.length for e in examples)
        rows = [[examples[i] for i in row] for row in pack_rows([e.length for e in examples], capacity)]
    else:
        rows = [[e] for e in examples]
    width = max(sum(e.length for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    shift_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for example in row:
            n = example.length
            input_ids[r, offset:offset + n] = torch.tensor(example.input_ids)
            # Shift inside the example, so no position learns to predict the next example's first token.
            shift_labels[r, offset:offset + n - 1] = torch.tensor(example.labels[1:])
            position_ids[r, offset:offset + n] = torch.arange(n)
            attention_mask[r, offset:offset + n] = 1
            offset += n
        # Padding gets its own positions 0..k: a separate "sequence" that no real token attends to.
        position_ids[r, offset:] = torch.arange(width - offset)
    keep = torch.nonzero((shift_labels != IGNORE_INDEX).any(dim=0)).flatten()
    tokens = sum(e.length for e in examples)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": None if packing else attention_mask,
        "shift_labels": shift_labels,
        "keep": keep,
        "tokens": tokens,
    }
