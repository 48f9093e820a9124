"""Drift between a reference set and live traffic: embedding drift (MMD² with a permutation test,
centroid distance) and token drift (Jensen-Shannon, PSI, χ², lengths, unknown tokens).

One array API: NumPy on CPU, CuPy (or Triton) on GPU; torch tensors are accepted through DLPack.
GPU modules, torch and MLflow are imported only when used.
"""

from llmops.drift.embedding import MMDResult, median_bandwidth, mmd_test
from llmops.drift.inputs import DriftInputError, DriftWarning
from llmops.drift.tokens import TokenDriftResult, js_divergence_bits, psi, token_drift

__all__ = [
    "DriftInputError",
    "DriftWarning",
    "MMDResult",
    "TokenDriftResult",
    "js_divergence_bits",
    "median_bandwidth",
    "mmd_test",
    "psi",
    "token_drift",
]
