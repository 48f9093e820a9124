"""Input checks shared by the drift tests: array conversion (NumPy, CuPy, torch via DLPack) and
the errors users see for bad input."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from llmops.errors import LlmopsError

__all__ = ["DriftInputError", "DriftWarning", "array_module_name", "as_array", "clean_embeddings", "check_token_ids"]


class DriftInputError(LlmopsError):
    """The data given to a drift test cannot be used (shape, emptiness, NaN, ids out of range)."""


class DriftWarning(UserWarning):
    """Something was fixed up in the data (e.g. rows with NaN dropped); the message says what."""


def array_module_name(x: Any) -> str:
    """'cupy' for CuPy arrays and CUDA torch tensors, 'torch' for CPU torch tensors, else 'numpy'."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "cupy" if x.device.type == "cuda" else "torch"
    return "cupy" if module == "cupy" else "numpy"


def as_array(x: Any, *, device: str, name: str):
    """Return `x` as a NumPy (`device="cpu"`) or CuPy (`device="gpu"`) array, without a copy where
    the data already lives there (torch tensors go through DLPack).

    Raises:
        DriftInputError: when `x` cannot be read as an array.
    """
    kind = array_module_name(x)
    if kind in ("torch", "cupy") and type(x).__module__.startswith("torch"):
        x = x.detach()
        if device == "cpu":
            return np.from_dlpack(x.cpu().contiguous()) if kind == "cupy" else np.from_dlpack(x.contiguous())
        import cupy

        return cupy.from_dlpack(x.contiguous() if kind == "cupy" else x.cuda().contiguous())
    if device == "gpu":
        import cupy

        return cupy.asarray(x)
    if kind == "cupy":
        return x.get()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as error:
        raise DriftInputError(f"{name}: cannot read the data as an array ({error})") from error


def clean_embeddings(reference, current, xp=np):
    """Check two embedding matrices and drop rows holding NaN or infinity (with a DriftWarning).

    Returns:
        (reference, current) as float32 arrays of the same array module.

    Raises:
        DriftInputError: not 2-D, different dimensions, or fewer than 2 usable rows in a set.
    """
    out = []
    for name, data in (("reference", reference), ("current", current)):
        if data.ndim == 1 and data.size == 0:
            raise DriftInputError(f"the {name} set is empty: give at least 2 rows")
        if data.ndim != 2:
            raise DriftInputError(f"the {name} embeddings must be a 2-D array (rows x dimensions), got shape {tuple(data.shape)}")
        if data.dtype.kind not in "fiu":
            raise DriftInputError(f"the {name} embeddings must be numbers, got dtype {data.dtype}")
        data = data.astype(xp.float32, copy=False)
        finite = xp.isfinite(data).all(axis=1)
        dropped = int(data.shape[0] - int(finite.sum()))
        if dropped:
            warnings.warn(f"dropped {dropped} of {data.shape[0]} {name} rows holding NaN or infinity", DriftWarning, stacklevel=3)
            data = data[finite]
        if data.shape[0] < 2:
            detail = f" ({dropped} dropped for NaN/infinity)" if dropped else ""
            raise DriftInputError(f"the {name} set has {data.shape[0]} usable rows{detail}: the test needs at least 2")
        out.append(data)
    if out[0].shape[1] != out[1].shape[1]:
        raise DriftInputError(
            f"embedding dimensions differ: reference has {out[0].shape[1]}, current has {out[1].shape[1]}; "
            "embed both sets with the same model"
        )
    return out[0], out[1]


def check_token_ids(ids, vocab_size: int, name: str, xp=np):
    """Check a flat token-id array: integers within [0, vocab_size).

    Raises:
        DriftInputError: empty, not integers, or an id outside the vocabulary (the message gives it).
    """
    if ids.size == 0:
        raise DriftInputError(f"the {name} token set is empty")
    if ids.dtype.kind not in "iu":
        raise DriftInputError(f"{name} token ids must be integers, got dtype {ids.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise DriftInputError(f"{name} token id {bad} is outside the vocabulary [0, {vocab_size}): check vocab_size or the tokenizer")
    return ids
