"""How the GPU token histogram splits its work, and a NumPy walk of that split (its CPU test oracle).

The CuPy kernel (`cupy_kernels.token_histogram`) reads ids with 16-byte vector loads. A vector load
from an address that is not a multiple of 16 faults ("misaligned address"), and a contiguous view
such as ``ids[1:]`` starts 4 or 8 bytes past an aligned allocation. So the ids are split in three:

- a scalar *head* up to the first 16-byte boundary (at most 3 int32 or 1 int64 ids),
- an aligned *body* of ``n_vec`` vectors of ``vec`` ids each,
- a scalar *tail* after the last whole vector.

`plan_histogram` computes that split (and the launch shape) on the host; the kernel receives
``head`` and derives the rest. `emulate_histogram` performs every load the kernel performs, checks
each vector load's alignment like the hardware does, and counts per vocabulary slice with the
kernel's unsigned range test, so CI checks the schedule without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VECTOR_BYTES", "HistogramPlan", "MisalignedLoad", "plan_histogram", "emulate_histogram"]

VECTOR_BYTES = 16  # int4 / longlong2 loads
THREADS_PER_BLOCK = 1024


class MisalignedLoad(RuntimeError):
    """A vector load from an address the GPU would reject (CUDA's "misaligned address")."""


@dataclass(frozen=True)
class HistogramPlan:
    """The kernel's split of ``n`` ids of ``itemsize`` bytes, and its launch shape."""

    n: int
    itemsize: int
    head: int  # scalar ids before the first 16-byte boundary
    slice_bins: int  # vocabulary bins per block (shared memory)
    slices: int  # blockIdx.y range: vocabulary slices
    blocks_x: int  # blockIdx.x range: blocks per slice

    @property
    def vec(self) -> int:
        return VECTOR_BYTES // self.itemsize

    @property
    def n_vec(self) -> int:
        return max(self.n - self.head, 0) // self.vec

    @property
    def tail_start(self) -> int:
        return self.head + self.n_vec * self.vec


def plan_histogram(address: int, n: int, itemsize: int, vocab: int, *, shared_bytes: int, sms: int) -> HistogramPlan:
    """The split and launch shape for ``n`` ids starting at byte ``address``.

    Args:
        address: the device address of the first id (a multiple of ``itemsize``).
        n: number of ids; itemsize: 4 (int32) or 8 (int64); vocab: histogram bins.
        shared_bytes: shared memory a block may use; sms: the device's multiprocessor count.
    """
    if itemsize not in (4, 8) or address % itemsize:
        raise ValueError(f"ids must be int32 or int64 at an address aligned to their size (got {itemsize} bytes at {address:#x})")
    head = min(n, (-address % VECTOR_BYTES) // itemsize)
    slice_bins = min(int(vocab), shared_bytes // 4)
    slices = -(-int(vocab) // slice_bins)
    slice_bins = -(-int(vocab) // slices)  # even slices: every block does the same work
    blocks_per_sm = max(1, shared_bytes // (slice_bins * 4 + 1024))
    return HistogramPlan(n=int(n), itemsize=itemsize, head=head, slice_bins=slice_bins, slices=slices, blocks_x=sms * blocks_per_sm)


def emulate_histogram(ids: np.ndarray, vocab: int, plan: HistogramPlan, address: int) -> np.ndarray:
    """Counts as the kernel computes them, with the kernel's loads; raises `MisalignedLoad` where a GPU would fault.

    Args:
        ids: the 1-D int32/int64 ids the kernel reads (a view at ``address``).
        vocab: histogram bins; plan: the launch plan; address: the byte address of ``ids[0]``.

    Returns:
        int64 counts of shape (vocab,).
    """
    step = plan.blocks_x * THREADS_PER_BLOCK
    vector_index = np.arange(plan.n_vec, dtype=np.int64)  # grid-stride: thread t reads t, t + step, ...
    assert plan.n_vec == 0 or np.unique(vector_index % step).size == min(step, plan.n_vec)
    load_addresses = address + (plan.head + vector_index * plan.vec) * plan.itemsize
    misaligned = np.flatnonzero(load_addresses % VECTOR_BYTES)
    if misaligned.size:
        raise MisalignedLoad(f"vector load {int(misaligned[0])} at {int(load_addresses[misaligned[0]]):#x} is not {VECTOR_BYTES}-byte aligned")
    body = ids[plan.head : plan.tail_start].reshape(plan.n_vec, plan.vec) if plan.n_vec else ids[:0].reshape(0, plan.vec)
    scalars = np.concatenate([ids[: plan.head], ids[plan.tail_start :]])
    read = np.concatenate([body.ravel(), scalars])
    if read.size != plan.n:
        raise AssertionError(f"the kernel reads {read.size} ids, expected {plan.n}")
    out = np.zeros(vocab, np.int64)
    for slice_index in range(plan.slices):  # blockIdx.y
        lo = slice_index * plan.slice_bins
        width = min(plan.slice_bins, vocab - lo)
        # (unsigned int)(id - lo) < width: one compare rejects ids on either side of the slice
        offset = (read.astype(np.int64) - lo).astype(np.uint32)
        inside = offset[offset < width]
        out[lo : lo + width] += np.bincount(inside, minlength=width)[:width]
    return out
