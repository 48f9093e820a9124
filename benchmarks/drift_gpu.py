"""Drift on one GPU against absolute targets: the MMD permutation test and the token histogram.

    python benchmarks/drift_gpu.py            # 100,000 rows per side, d=384, 1,000 permutations;
                                              # 10^9 int32 token ids over a 128,256-token vocabulary

Targets (the issue, absolute): `mmd_s` <= 0.3 s for the whole `mmd_test` (bandwidth, permutation
labels, tiles, statistics) and `hist_ms` <= 4 ms for the histogram. Beside them, a competent PyTorch
peer runs the same algorithm: symmetric tiles (I <= J only), the Gram in TF32 on tensor cores, the
kernel tile in float16 and one float16 x float16 -> float32 GEMM with all permutation label columns
at once. It prints the tile work's achieved TFLOP/s for both and the share of the device's peak
(datasheet dense TF32 and float16 peaks for known devices, else a measured float16 GEMM peak).
Exits 0 with a `skip:` line where no GPU is visible. alibi-detect is not run: its (2n)² float32
kernel matrix alone would need 160 GB.

Ends with `mmd_s=… mmd_target_s=0.3 hist_ms=… hist_target_ms=4 ratio=<peer time / llmops time>
target=absolute …`: the goal is the absolute time, the ratio says how llmops stands against the peer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmops.extras import has_cupy  # noqa: E402

# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, FLOP/s: (TF32, FP16/BF16).
DATASHEET_PEAKS = {
    "H200": (494.7e12, 989.4e12),
    "H100 SXM": (494.7e12, 989.4e12),
    "H100 80GB HBM3": (494.7e12, 989.4e12),
    "H100 PCIe": (378e12, 756e12),
    "H100 NVL": (417.5e12, 835e12),
    "A100": (156e12, 312e12),
    "L40S": (183e12, 366e12),
}


def gpu_seconds(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `fn` over `repeats` runs after one warm-up, with the device synchronised."""
    import cupy as cp

    result = fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], result


def device_peaks(name: str) -> tuple[float, float, str]:
    """(TF32, float16) dense peaks in FLOP/s and where they come from."""
    for key, peaks in DATASHEET_PEAKS.items():
        if all(part in name for part in key.split()):
            return peaks[0], peaks[1], f"datasheet ({key})"
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    fp16 = 20 * 2 * 8192**3 / (time.perf_counter() - start)
    return fp16 / 2, fp16, "measured float16 GEMM (TF32 taken as half)"


def tile_flops(rows: int, d: int, label_columns: int, tile: int) -> float:
    """Matrix FLOPs of the symmetric tile schedule: Gram (2d per entry) and label GEMM (2 per entry and column)."""
    blocks = -(-rows // tile)
    entries = 0
    for i in range(blocks):
        bi = min(tile, rows - i * tile)
        for j in range(i, blocks):
            entries += bi * min(tile, rows - j * tile)
    return entries * 2.0 * (d + label_columns)


def _half_gemm_f32(a, b):
    """float16 x float16 with a float32 result (cuBLAS' fp32 accumulation kept, no fp16 rounding of the output)."""
    import torch

    try:
        return torch.mm(a, b, out_dtype=torch.float32)  # aten::mm.dtype, CUDA only
    except (TypeError, NotImplementedError, RuntimeError):
        return (a @ b).float()


def torch_peer_sums(z, labels, sigma: float, tile: int = 8192):
    """The PyTorch peer: symmetric tiles, TF32 Gram, float16 kernel tile, float16 GEMM with all label columns.

    Returns the within-group sums q (float64) of every permutation, like llmops' `q`.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    z = (z - z.mean(0)) / sigma
    half_sq = 0.5 * (z * z).sum(1)
    total, columns = z.shape[0], labels.shape[1]
    w = labels.to(torch.float16)
    q = torch.zeros(columns, dtype=torch.float64, device=z.device)
    for i0 in range(0, total, tile):
        zi, hi = z[i0 : i0 + tile], half_sq[i0 : i0 + tile]
        acc = torch.zeros(zi.shape[0], columns, dtype=torch.float64, device=z.device)
        for j0 in range(i0, total, tile):
            k = zi @ z[j0 : j0 + tile].T  # TF32
            k = torch.exp((k - hi[:, None] - half_sq[None, j0 : j0 + tile]).clamp_(max=0.0)).to(torch.float16)
            if i0 == j0:
                k.fill_diagonal_(0.0)
            acc += _half_gemm_f32(k, w[j0 : j0 + tile]).double() * (1.0 if i0 == j0 else 2.0)
        q += (acc * w[i0 : i0 + tile]).sum(0)
    return q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows per side")
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=1_000_000_000)
    parser.add_argument("--vocab", type=int, default=128_256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not has_cupy():
        print("skip: no CUDA GPU visible to CuPy; benchmarks/drift_gpu.py needs one (pip install 'llmops[gpu]' on a GPU machine)")
        return

    import cupy as cp
    import torch

    from llmops.drift import mmd_test
    from llmops.drift.kernels import cupy_kernels

    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    tf32_peak, fp16_peak, peak_source = device_peaks(name)
    print(f"conditions: device={name}, cupy {cp.__version__}, torch {torch.__version__}, n={args.n} per side, "
          f"d={args.d}, permutations={args.permutations}, tokens={args.tokens:,} int32, vocab={args.vocab:,}; "
          f"peaks {tf32_peak / 1e12:.0f} TF32 / {fp16_peak / 1e12:.0f} FP16 TFLOP/s ({peak_source})")

    rng = cp.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d), dtype=cp.float32)
    y = rng.standard_normal((args.n, args.d), dtype=cp.float32) + 0.01
    x /= cp.linalg.norm(x, axis=1, keepdims=True)
    y /= cp.linalg.norm(y, axis=1, keepdims=True)
    mmd_s, result = gpu_seconds(lambda: mmd_test(x, y, permutations=args.permutations, backend="gpu", seed=0), args.repeats)

    # The tile work alone (same labels and bandwidth), for both sides: this is where the FLOPs are.
    z = cp.concatenate([x, y])
    labels = cupy_kernels.permutation_labels(args.n, args.n, args.permutations)
    tiles_s, (q, _) = gpu_seconds(lambda: cupy_kernels.rbf_permutation_sums(z, labels, result.bandwidth), args.repeats)
    width = -(-(args.permutations + 2) // 8) * 8
    flops = tile_flops(2 * args.n, args.d, width, cupy_kernels.TILE)
    zt, labels_t = torch.from_dlpack(z), torch.from_dlpack(labels)
    peer_s, q_peer = gpu_seconds(lambda: torch_peer_sums(zt, labels_t, result.bandwidth), args.repeats)
    agreement = float(cp.max(cp.abs(cp.from_dlpack(q_peer) - q) / cp.abs(q)))

    cp.random.seed(0)
    ids = (cp.minimum(cp.random.zipf(1.1, args.tokens), args.vocab) - 1).astype(cp.int32)  # Zipf, like text
    ids = cp.random.permutation(args.vocab).astype(cp.int32)[ids]  # frequent tokens scattered over the vocabulary
    hist_s, counts = gpu_seconds(lambda: cupy_kernels.token_histogram(ids, args.vocab), args.repeats + 2)
    unaligned_s, counts_view = gpu_seconds(lambda: cupy_kernels.token_histogram(ids[1:], args.vocab), args.repeats)
    ids_t = torch.from_dlpack(ids)
    torch_hist_s, torch_counts = gpu_seconds(lambda: torch.bincount(ids_t, minlength=args.vocab), args.repeats + 2)
    assert (counts.astype(cp.int64) == cp.from_dlpack(torch_counts)).all(), "histogram mismatch"
    assert int(counts_view.sum()) == args.tokens - 1, "histogram of ids[1:] mismatch"

    llmops_tflops, peer_tflops = flops / tiles_s / 1e12, flops / peer_s / 1e12
    print(f"{'method':<60} {'time':>11} {'TFLOP/s':>8}")
    print(f"{'llmops mmd_test (cupy backend, everything)':<60} {mmd_s:>9.3f} s {'':>8}   p={result.p_value:.4f}")
    print(f"{'  llmops tile work (rbf_permutation_sums)':<60} {tiles_s:>9.3f} s {llmops_tflops:>8.1f}")
    print(f"{'  PyTorch peer tile work (TF32 Gram, fp16 tiles, symmetric)':<60} {peer_s:>9.3f} s {peer_tflops:>8.1f}"
          f"   max rel. diff of q {agreement:.1e}")
    print(f"{'llmops token_histogram (shared-memory slices)':<60} {hist_s * 1e3:>8.2f} ms")
    print(f"{'llmops token_histogram on ids[1:] (unaligned view)':<60} {unaligned_s * 1e3:>8.2f} ms")
    print(f"{'torch.bincount':<60} {torch_hist_s * 1e3:>8.2f} ms")
    print(f"mmd_s={mmd_s:.3f} mmd_target_s=0.3 hist_ms={hist_s * 1e3:.2f} hist_target_ms=4 "
          f"ratio={peer_s / tiles_s:.2f} target=absolute tiles_s={tiles_s:.3f} peer_s={peer_s:.3f} "
          f"tflops={llmops_tflops:.1f} peer_tflops={peer_tflops:.1f} "
          f"peak_share_tf32={llmops_tflops * 1e12 / tf32_peak:.2f} peak_share_fp16={llmops_tflops * 1e12 / fp16_peak:.2f} "
          f"hist_ratio_torch={torch_hist_s / hist_s:.2f}")


if __name__ == "__main__":
    main()
