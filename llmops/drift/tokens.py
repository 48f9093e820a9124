"""Token drift: histograms over the vocabulary compared by Jensen-Shannon, PSI and χ², plus
document-length and unknown-token statistics.

Histograms are the only pass over the raw token ids (a GPU kernel on the ``cupy`` backend);
everything after works on two vectors of vocabulary size. When document boundaries are known the
Jensen-Shannon divergence also gets a permutation test over documents, because at corpus scale χ²
rejects for any difference at all.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from llmops.drift import kernels
from llmops.drift.inputs import DriftInputError, as_array, check_token_ids

__all__ = ["TokenDriftResult", "token_drift", "js_divergence_bits", "psi"]


@dataclass(frozen=True)
class TokenDriftResult:
    """Outcome of `token_drift`.

    Attributes:
        js_divergence: Jensen-Shannon divergence of the token distributions, in bits (within [0, 1]).
        js_p_value: permutation p-value of the JS divergence over documents (None without document lengths).
        psi: population stability index, sum (q - p) ln(q / p), with probabilities floored at `psi_epsilon`.
        chi2, chi2_p_value, cramers_v: χ² test of the 2 x V contingency table, and its effect size.
        length_ks, length_p_value: two-sample KS test of document lengths (None without lengths).
        unknown_rate_reference, unknown_rate_current: share of `unk_id` tokens (None without unk_id).
        unseen_rate: share of current tokens whose id never occurs in the reference.
        over_represented, under_represented: top tokens by share difference (id, text, shares).
        drift: the verdict (JS permutation p < alpha, or JS >= js_threshold when no test could run).
    """

    js_divergence: float
    js_p_value: float | None
    psi: float
    chi2: float
    chi2_p_value: float
    cramers_v: float
    length_ks: float | None
    length_p_value: float | None
    unknown_rate_reference: float | None
    unknown_rate_current: float | None
    unseen_rate: float
    n_reference_tokens: int
    n_current_tokens: int
    vocab_size: int
    backend: str
    seconds: float
    drift: bool
    over_represented: list[dict[str, Any]] = field(default_factory=list)
    under_represented: list[dict[str, Any]] = field(default_factory=list)
    js_null: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the null distribution is left out)."""
        out = asdict(self)
        out.pop("js_null")
        return out


def js_divergence_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits between distributions along axis 0 (0 log 0 = 0)."""
    p = p / p.sum(axis=0)
    q = q / q.sum(axis=0)
    mid = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / mid), 0.0).sum(axis=0)
        kl_q = np.where(q > 0, q * np.log2(q / mid), 0.0).sum(axis=0)
    return np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0)


def psi(p_counts: np.ndarray, q_counts: np.ndarray, epsilon: float = 1e-6) -> float:
    """Population stability index with probabilities floored at `epsilon` (zero counts are common)."""
    p = np.maximum(p_counts / p_counts.sum(), epsilon)
    q = np.maximum(q_counts / q_counts.sum(), epsilon)
    return float(((q - p) * np.log(q / p)).sum())


def _flatten(ids, lengths, name: str, device: str):
    """A flat id array plus per-document lengths (or None) from an array or a list of sequences."""
    if isinstance(ids, (list, tuple)) and (len(ids) == 0 or not np.isscalar(ids[0])):
        if lengths is not None:
            raise DriftInputError(f"{name}: give either a list of documents or flat ids with lengths, not both")
        seqs = [np.asarray(as_array(s, device="cpu", name=name)).ravel() for s in ids]
        lengths = np.array([s.size for s in seqs], np.int64)
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        return (as_array(flat, device=device, name=name), lengths)
    flat = as_array(ids, device=device, name=name).ravel()
    if lengths is not None:
        lengths = np.asarray(lengths, np.int64).ravel()
        if lengths.sum() != flat.size or (lengths < 0).any():
            raise DriftInputError(f"{name} lengths sum to {int(lengths.sum())} but there are {flat.size} token ids")
    return flat, lengths


def _histogram(ids, vocab_size: int, backend: str) -> np.ndarray:
    if backend == "cupy":
        from llmops.drift.kernels import cupy_kernels

        return cupy_kernels.token_histogram(ids, vocab_size).get()
    from llmops.drift.kernels import numpy_ref

    return numpy_ref.token_histogram(ids, vocab_size)


def _js_permutation_null(ref_ids, cur_ids, ref_lengths, cur_lengths, vocab_size, permutations, seed):
    """JS divergence of random document splits: histograms for all splits are one sparse GEMM."""
    from scipy import sparse
    lengths = np.concatenate([ref_lengths, cur_lengths])
    doc_of_token = np.repeat(np.arange(lengths.size), lengths)
    ids = np.concatenate([np.asarray(ref_ids), np.asarray(cur_ids)]).astype(np.int64)
    docs = sparse.csr_matrix((np.ones(ids.size, np.float32), (doc_of_token, ids)), shape=(lengths.size, vocab_size))
    docs = docs[:, np.unique(ids)]  # columns of tokens that never occur add nothing
    base = np.zeros(lengths.size, np.float32)
    base[: ref_lengths.size] = 1.0
    labels = np.random.default_rng(seed).permuted(np.broadcast_to(base, (permutations, base.size)), axis=1).T
    group = np.asarray(docs.T @ labels)  # tokens x permutations: counts of the "reference" group
    total = np.asarray(docs.sum(axis=0)).ravel()[:, None]
    return js_divergence_bits(group, total - group)


def _top_tokens(p, q, tokenizer, top_k: int, largest: bool) -> list[dict[str, Any]]:
    diff = q - p
    order = np.argsort(-diff if largest else diff, kind="stable")[:top_k]
    rows = []
    for token in order:
        if (diff[token] > 0) != largest or diff[token] == 0:
            break
        text = tokenizer.decode([int(token)]) if tokenizer is not None else None
        rows.append({"id": int(token), "text": text, "reference_share": float(p[token]), "current_share": float(q[token])})
    return rows


def token_drift(
    reference_ids,
    current_ids,
    vocab_size: int,
    *,
    reference_lengths: Sequence[int] | None = None,
    current_lengths: Sequence[int] | None = None,
    tokenizer=None,
    unk_id: int | None = None,
    top_k: int = 10,
    permutations: int = 200,
    alpha: float = 0.05,
    js_threshold: float = 0.1,
    psi_epsilon: float = 1e-6,
    backend: str = "auto",
    seed: int = 0,
) -> TokenDriftResult:
    """Compare the token distributions of a reference and a current set.

    Args:
        reference_ids, current_ids: flat token-id arrays (NumPy, CuPy, torch) or lists of documents
            (sequences of ids); a list of documents also gives the document lengths.
        vocab_size: the tokenizer's vocabulary size; every id must lie in [0, vocab_size).
        reference_lengths, current_lengths: tokens per document for flat ids (enables the length KS
            test and the JS permutation test).
        tokenizer: anything with ``decode(list[int])`` to show the top drifting tokens as text.
        unk_id: the unknown-token id (default: ``tokenizer.unk_token_id`` when available).
        top_k: how many over- and under-represented tokens to report.
        permutations: document permutations for the JS p-value (0 disables it).
        alpha, js_threshold: the verdict, see `TokenDriftResult.drift`.
        psi_epsilon: floor on probabilities in the PSI.
        backend: "auto", "numpy"/"cpu", "cupy"/"gpu" (histograms on the GPU).
        seed: seeds the permutations.

    Raises:
        DriftInputError: empty sets, non-integer ids, ids outside the vocabulary, bad lengths.
    """
    from scipy import stats  # 1 s to import: kept out of `import llmops.drift`

    start = time.perf_counter()
    if int(vocab_size) < 1:
        raise DriftInputError(f"vocab_size must be positive, got {vocab_size}")
    name = kernels.resolve_backend(backend)
    name = "numpy" if name == "triton" else name  # the histogram has no Triton kernel: bincount is the twin
    device = kernels.backend_device(name)
    ref, ref_len = _flatten(reference_ids, reference_lengths, "reference", device)
    cur, cur_len = _flatten(current_ids, current_lengths, "current", device)
    xp = np if device == "cpu" else __import__("cupy")
    check_token_ids(ref, vocab_size, "reference", xp)
    check_token_ids(cur, vocab_size, "current", xp)
    p_counts = _histogram(ref, vocab_size, name).astype(np.float64)
    q_counts = _histogram(cur, vocab_size, name).astype(np.float64)
    p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
    js = float(js_divergence_bits(p, q))

    seen = (p_counts + q_counts) > 0
    table = np.stack([p_counts[seen], q_counts[seen]])
    if table.shape[1] > 1:
        chi2, chi2_p, _, _ = stats.chi2_contingency(table, correction=False)
        cramers_v = float(np.sqrt(chi2 / table.sum()))
    else:
        chi2, chi2_p, cramers_v = 0.0, 1.0, 0.0

    js_p, null, length_ks, length_p = None, np.zeros(0), None, None
    if ref_len is not None and cur_len is not None:
        length_ks, length_p = (float(v) for v in stats.ks_2samp(ref_len, cur_len))
        if permutations > 0 and ref_len.size + cur_len.size > 2:
            host = (lambda a: a.get()) if device == "gpu" else np.asarray
            null = _js_permutation_null(host(ref), host(cur), ref_len, cur_len, int(vocab_size), int(permutations), seed)
            js_p = float((1 + np.count_nonzero(null >= js - 1e-12)) / (1 + null.size))

    if unk_id is None and tokenizer is not None:
        unk_id = getattr(tokenizer, "unk_token_id", None)
    unk_ref = float(p[unk_id]) if unk_id is not None else None
    unk_cur = float(q[unk_id]) if unk_id is not None else None
    drift = js_p < alpha if js_p is not None else js >= js_threshold
    return TokenDriftResult(
        js_divergence=js,
        js_p_value=js_p,
        psi=psi(p_counts, q_counts, psi_epsilon),
        chi2=float(chi2),
        chi2_p_value=float(chi2_p),
        cramers_v=cramers_v,
        length_ks=length_ks,
        length_p_value=length_p,
        unknown_rate_reference=unk_ref,
        unknown_rate_current=unk_cur,
        unseen_rate=float(q[p_counts == 0].sum()),
        n_reference_tokens=int(p_counts.sum()),
        n_current_tokens=int(q_counts.sum()),
        vocab_size=int(vocab_size),
        backend=name,
        seconds=time.perf_counter() - start,
        drift=bool(drift),
        over_represented=_top_tokens(p, q, tokenizer, top_k, largest=True),
        under_represented=_top_tokens(p, q, tokenizer, top_k, largest=False),
        js_null=null,
    )
