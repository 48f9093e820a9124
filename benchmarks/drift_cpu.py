"""Embedding drift on CPU: llmops' NumPy backend vs alibi-detect MMDDrift(pytorch) vs Evidently's MMD.

Same data for all three (d=384, 5,000 rows per side, 100 permutations by default; the data of
shared/reference/drift.md §4: a 64-dim latent Gaussian mapped to 384 dims, the current set's latent
mean shifted by 0.15 in 8 dimensions, rows L2-normalised). Run with the interpreter that has the
baselines installed; a missing baseline prints a skip line. Example:

    OMP_NUM_THREADS=2 python benchmarks/drift_cpu.py

Ends with `ratio=<llmops speed-up over alibi-detect> target=100` plus more key=value pairs, among
them `efficiency=`: the achieved FLOP/s of llmops' tile work (the Gram and label GEMMs of the
symmetric tile schedule, timed alone) divided by the FLOP/s of a NumPy float32 GEMM measured in the
same run with the same threads, i.e. how close the tiles come to what this machine's BLAS can do.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402


def make_data(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((64, d)) / 8.0
    shift = np.zeros(64)
    shift[:8] = 0.15

    def draw(mean):
        x = (rng.standard_normal((n, 64)) + mean) @ mix + 0.05 * rng.standard_normal((n, d))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(0.0), draw(shift)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run_llmops(ref, cur, permutations):
    from llmops.drift import mmd_test

    result = mmd_test(ref, cur, permutations=permutations, backend="numpy", seed=0)
    return result.seconds, f"mmd2={result.mmd2:.6f} p={result.p_value:.4f} sigma={result.bandwidth:.4f}"


def run_alibi(ref, cur, permutations):
    from alibi_detect.cd import MMDDrift

    start = time.perf_counter()
    detector = MMDDrift(ref, backend="pytorch", p_val=0.05, n_permutations=permutations, device="cpu")
    prediction = detector.predict(cur)["data"]
    return time.perf_counter() - start, f"mmd2={prediction['distance']:.6f} p={prediction['p_val']:.4f}"


def tile_work_flops(rows: int, d: int, columns: int, tile: int) -> float:
    """Matrix FLOPs of `numpy_ref.rbf_permutation_sums`: tile pairs I <= J, each a Gram (2d per entry),
    a product with the weights (2 per entry and column) and, off the diagonal, the column sums (2 per entry)."""
    starts = range(0, rows, tile)
    flops = 0.0
    for a, i in enumerate(starts):
        bi = min(tile, rows - i)
        for j in list(starts)[a:]:
            entries = bi * min(tile, rows - j)
            flops += entries * 2.0 * (d + columns + (1 if i != j else 0))
    return flops


def sgemm_flops_per_s(workers: int, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of float32 NumPy GEMMs run the way the tiles run: `workers` threads, one BLAS thread each."""
    from concurrent.futures import ThreadPoolExecutor

    from llmops.drift.kernels.numpy_ref import _single_threaded_blas

    rng = np.random.default_rng(1)
    pairs = [(rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32))
             for _ in range(workers)]
    with _single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda ab: ab[0] @ ab[1], pairs))
        best = min(_timed(lambda: list(pool.map(lambda ab: ab[0] @ ab[1], pairs))) for _ in range(repeats))
    return workers * 2.0 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tile_efficiency(ref, cur, permutations: int, repeats: int) -> tuple[float, float, float]:
    """(achieved FLOP/s of the tile work, NumPy sgemm FLOP/s, their ratio), measured back to back."""
    from llmops.drift.embedding import median_bandwidth, permutation_labels
    from llmops.drift.kernels import numpy_ref

    z = np.concatenate([ref, cur])
    labels = permutation_labels(len(ref), len(cur), permutations, seed=0)
    sigma = median_bandwidth(z)
    flops = tile_work_flops(len(z), z.shape[1], labels.shape[1] + 1, numpy_ref._tile_size(len(z)))
    workers = min(os.cpu_count() or 1, 8)  # numpy_ref's default: tiles in threads, one BLAS thread each
    tiles, gemms = [], []
    for _ in range(repeats):  # alternating, best of each: a shared machine's load moves between runs
        tiles.append(_timed(lambda: numpy_ref.rbf_permutation_sums(z, labels, sigma)))
        gemms.append(sgemm_flops_per_s(workers, repeats=1))
    achieved, sgemm = flops / min(tiles), max(gemms)
    return achieved, sgemm, achieved / sgemm


def evidently_runner(ref, cur):
    import pandas as pd
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import mmd

    method = mmd()
    ref_df, cur_df = pd.DataFrame(ref), pd.DataFrame(cur)

    def run():
        start = time.perf_counter()
        score, drifted, _ = method(cur_df, ref_df)
        return time.perf_counter() - start, f"mmd2={score:.6f} drift={drifted} (threshold 0.015, no permutation test)"

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="rows per side")
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of llmops and Evidently (best kept); alibi runs once")
    parser.add_argument("--skip-alibi", action="store_true", help="alibi takes minutes at the default size")
    args = parser.parse_args()

    ref, cur = make_data(args.n, args.d)
    print(f"conditions: n={args.n} per side, d={args.d}, permutations={args.permutations}, float32, device=cpu "
          f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}), python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {version('torch')}, alibi-detect {version('alibi-detect')}, "
          f"evidently {version('evidently')}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    have_evidently = version("evidently") != "not installed"
    if not have_evidently:
        print("skip: evidently is not installed (pip install evidently)")
    # The box is shared, so its load drifts over minutes: llmops and Evidently run alternately
    # and each keeps its best time; alibi (minutes) runs once, between two llmops runs.
    llmops_runs, evidently_runs = [], []
    run_evidently = evidently_runner(ref, cur) if have_evidently else None
    for _ in range(args.repeats):
        llmops_runs.append(run_llmops(ref, cur, args.permutations))
        if run_evidently:
            evidently_runs.append(run_evidently())

    rows = []
    alibi_s = evidently_s = None
    if args.skip_alibi:
        print("skip: alibi-detect (--skip-alibi)")
    elif version("alibi-detect") == "not installed":
        print("skip: alibi-detect is not installed (pip install 'alibi-detect[torch]')")
    else:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        alibi_s, alibi_detail = run_alibi(ref, cur, args.permutations)
        llmops_runs.append(run_llmops(ref, cur, args.permutations))
    llmops_s, detail = min(llmops_runs)
    rows.append((f"llmops mmd_test (numpy backend), best of {len(llmops_runs)}", llmops_s, detail))
    if alibi_s:
        rows.append(("alibi-detect MMDDrift(backend='pytorch'), init + predict", alibi_s, alibi_detail))
    if evidently_runs:
        evidently_s, detail = min(evidently_runs)
        rows.append((f"evidently EmbeddingsDrift mmd (statistic only), best of {len(evidently_runs)}", evidently_s, detail))

    print(f"{'method':<66} {'seconds':>9} {'llmops speed-up':>16}  result")
    for label, secs, detail in rows:
        print(f"{label:<66} {secs:>9.3f} {secs / llmops_s:>15.1f}x  {detail}")
    print(f"llmops runs (s): {' '.join(f'{t:.3f}' for t, _ in llmops_runs)}; "
          f"evidently runs (s): {' '.join(f'{t:.3f}' for t, _ in evidently_runs) or 'none'}; load average at end {os.getloadavg()[0]:.2f}")
    achieved, sgemm, efficiency = tile_efficiency(ref, cur, args.permutations, args.repeats)
    print(f"tile work: {achieved / 1e9:.1f} GFLOP/s achieved; NumPy sgemm (2048³ per thread, same threads): {sgemm / 1e9:.1f} GFLOP/s")
    ratio = f"{alibi_s / llmops_s:.1f}" if alibi_s else "nan"
    ratio_ev = f"{evidently_s / llmops_s:.2f}" if evidently_s else "nan"
    print(f"ratio={ratio} target=100 ratio_evidently={ratio_ev} target_evidently=2 llmops_s={llmops_s:.3f} "
          f"efficiency={efficiency:.2f} tile_gflops={achieved / 1e9:.1f} sgemm_gflops={sgemm / 1e9:.1f}")


if __name__ == "__main__":
    main()
