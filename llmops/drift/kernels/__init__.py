"""Compute backends of the drift tests, behind one switch.

- ``numpy``  (alias ``cpu``): tiled BLAS in float32 with threads; the reference and test oracle.
- ``cupy``   (alias ``gpu``): cuBLAS tiles plus custom CuPy kernels (fused exp, shared-memory histograms).
- ``triton``: a fused distance -> exp -> product kernel (runs on CUDA, or on CPU under TRITON_INTERPRET=1).

``auto`` picks ``cupy`` when CuPy sees a GPU, else ``numpy``. Every backend implements
``rbf_permutation_sums(z, labels, bandwidth) -> (q, r)`` with the meaning given in `numpy_ref`.
GPU modules are imported only when their backend is chosen.
"""

from __future__ import annotations

import os

from llmops import extras
from llmops.errors import LlmopsError

__all__ = ["BACKENDS", "resolve_backend", "backend_device", "rbf_permutation_sums"]

BACKENDS = ("auto", "numpy", "cpu", "cupy", "gpu", "triton")
_ALIASES = {"cpu": "numpy", "gpu": "cupy"}


def resolve_backend(backend: str) -> str:
    """Map a user's backend choice to ``numpy``, ``cupy`` or ``triton``.

    Raises:
        LlmopsError: unknown name, or a GPU backend asked for where it cannot run.
    """
    name = _ALIASES.get(backend, backend)
    if name == "auto":
        return "cupy" if extras.has_cupy() else "numpy"
    if name == "numpy":
        return name
    if name == "cupy":
        extras.require("cupy", "the GPU drift backend")
        if not extras.has_cupy():
            raise LlmopsError("backend 'gpu' needs a CUDA GPU, and CuPy sees none: use --backend cpu (or auto)")
        return name
    if name == "triton":
        extras.require("triton", "the Triton drift backend")
        if not (extras.has_cuda() or os.environ.get("TRITON_INTERPRET") == "1"):
            raise LlmopsError("backend 'triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for small CPU checks)")
        return name
    raise LlmopsError(f"unknown drift backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def backend_device(name: str) -> str:
    """'gpu' for cupy, 'cpu' for numpy; triton works on torch tensors on whatever device it runs."""
    return "gpu" if name == "cupy" else "cpu"


def rbf_permutation_sums(z, labels, bandwidth: float, backend: str):
    """Dispatch to the backend's ``rbf_permutation_sums`` (arrays must already be on its device)."""
    if backend == "numpy":
        from llmops.drift.kernels import numpy_ref

        return numpy_ref.rbf_permutation_sums(z, labels, bandwidth)
    if backend == "cupy":
        from llmops.drift.kernels import cupy_kernels

        return cupy_kernels.rbf_permutation_sums(z, labels, bandwidth)
    if backend == "triton":
        from llmops.drift.kernels import triton_kernels

        return triton_kernels.rbf_permutation_sums(z, labels, bandwidth)
    raise ValueError(backend)
