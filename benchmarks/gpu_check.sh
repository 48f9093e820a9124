#!/usr/bin/env bash
# The GPU proof of llmops in one script, sized for one H100/H200 and a 15-minute device loan (<= 8 min):
#   1. tests/gpu: every GPU kernel against its NumPy twin, the vLLM engine, the transformers engine
#   2. benchmarks/drift_gpu.py: mmd_s (100k rows per side, d=384, 1,000 permutations) vs 0.3 s,
#      hist_ms (10^9 ids, 128,256-token vocabulary) vs 4 ms, the PyTorch peer, TFLOP/s and peak share
#   3. benchmarks/finetune_throughput.py --device cuda: random-init ~0.5B Llama in bf16, packed llmops
#      vs padded Trainer + peft (>= 4x), and llmops' MFU (>= 25% of the bf16 peak)
#   4. the transformers engine on CUDA with two adapters and the base in one batch
# Prints one `gpu_check:` summary line per figure at the end; the logs go to $OUT (else /tmp/llmops-gpu-check).
# Each part exits 0 with a `skip:` line where no GPU is visible. Exit status: non-zero if a part failed.
#
#   bash benchmarks/gpu_check.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
LOGS="${OUT:-${TMPDIR:-/tmp}/llmops-gpu-check}"
mkdir -p "$LOGS"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
status=0
summary=()

part() {  # part NAME TIMEOUT_S COMMAND...: run with a time limit, keep the log, remember the exit status
    local name="$1" limit="$2"
    shift 2
    local started=$SECONDS
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - started)) s"
    if [ "$rc" -ne 0 ]; then
        status=1
        summary+=("gpu_check: $name FAILED (exit $rc, see $LOGS/$name.log)")
    fi
    return 0
}

last_line() {  # the last line of a log that starts with one of the given prefixes
    grep -E "^($2)" "$LOGS/$1.log" | tail -n 1
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "skip: no CUDA GPU visible to torch; benchmarks/gpu_check.sh needs one"
    exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/gpu: /'
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

# Time limits add up to 8 minutes; a part that hits its limit fails (exit 124) and the next one runs.
part tests_gpu 120 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider --ignore tests/gpu/test_transformers_engine_cuda.py
part drift_gpu 120 "$PY" benchmarks/drift_gpu.py --repeats 3
part finetune 180 "$PY" benchmarks/finetune_throughput.py --device cuda --model-size 0.5b --steps 30 --rows 600 --repeat 1 --batch-size 8
part engine_two_adapters 60 "$PY" -m pytest tests/gpu/test_transformers_engine_cuda.py -q -rs -p no:cacheprovider

tests_line=$(last_line tests_gpu "[0-9]+ (passed|failed|skipped)|no tests ran")
summary+=("gpu_check: tests/gpu ${tests_line:-no result}")
drift=$(last_line drift_gpu "mmd_s=|skip:")
if [[ "$drift" == mmd_s=* ]]; then
    for key in mmd_s hist_ms tflops peak_share_tf32 peak_share_fp16 ratio; do
        value=$(sed -n "s/.*\b$key=\([^ ]*\).*/\1/p" <<<"$drift")
        case $key in
            mmd_s) summary+=("gpu_check: mmd_s=$value target<=0.3 (100k rows/side, d=384, 1000 permutations)") ;;
            hist_ms) summary+=("gpu_check: hist_ms=$value target<=4 (1e9 ids, vocab 128,256)") ;;
            tflops) summary+=("gpu_check: drift_tile_tflops=$value") ;;
            ratio) summary+=("gpu_check: drift_vs_pytorch_peer=$value (peer time / llmops time)") ;;
            *) summary+=("gpu_check: drift_$key=$value") ;;
        esac
    done
else
    summary+=("gpu_check: drift ${drift:-no result}")
fi
finetune=$(last_line finetune "ratio=|skip:")
if [[ "$finetune" == ratio=* ]]; then
    ratio=$(sed -n 's/^ratio=\([^ ]*\).*/\1/p' <<<"$finetune")
    mfu=$(sed -n 's/.*\bmfu=\([^ ]*\).*/\1/p' <<<"$finetune")
    tps=$(sed -n 's/.*\bllmops_tokens_per_s=\([^ ]*\).*/\1/p' <<<"$finetune")
    summary+=("gpu_check: finetune_packed_vs_padded=$ratio target>=4 (0.5B Llama, bf16)")
    summary+=("gpu_check: finetune_mfu=$mfu target>=0.25 (llmops $tps tokens/s)")
else
    summary+=("gpu_check: finetune ${finetune:-no result}")
fi
engine=$(last_line engine_two_adapters "[0-9]+ (passed|failed|skipped)|no tests ran")
summary+=("gpu_check: transformers engine, two adapters + base in one batch on CUDA: ${engine:-no result}")

echo
printf '%s\n' "${summary[@]}"
exit $status
