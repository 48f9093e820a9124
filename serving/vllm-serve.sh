#!/usr/bin/env bash
# Launch one vLLM replica of the fleet behind `engine.kind: upstream` (serving/gateway.vllm.yaml).
#
# What the gateway's upstream engine relies on:
#   - the base model served under its *registry version ref* (`--served-model-name tiny/1`, never an
#     alias), because the gateway rewrites `model` to the resolved version; or map names in the
#     gateway config with `engine.upstream.served_model_names`;
#   - `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, so the gateway can load adapter
#     versions (`NAME/VERSION`) on first use through `POST /v1/load_lora_adapter`; the adapter path it
#     sends is the registry's artifact location, so replicas must see the store's artifacts (a shared
#     filesystem, or the same path on every machine);
#   - `GET /health`, which vLLM serves; the gateway takes a failing replica out of rotation.
#
# Usage (environment variables; anything after the script name is passed on to `vllm serve`):
#   BASE_MODEL=meta-llama/Llama-3.1-8B-Instruct SERVED_MODEL_NAME=llama-3.1-8b-instruct/1 PORT=8101 serving/vllm-serve.sh
#   BASE_REF=tiny@production PORT=8102 serving/vllm-serve.sh        # path and name read from the registry
#   BASE_REF=llama@production PORT=8101 serving/vllm-serve.sh --tensor-parallel-size 2
#
#   BASE_MODEL              local folder or hub id of the base weights (or give BASE_REF)
#   BASE_REF                a registry ref of the base (`tiny`, `tiny@production`, `tiny/1`): BASE_MODEL and
#                           SERVED_MODEL_NAME come from `llmops models show` (needs llmops and the store)
#   SERVED_MODEL_NAME       the base's registry version ref, e.g. tiny/1 (default: BASE_MODEL)
#   REVISION                hub revision to pin (a commit), as registered with `--revision`
#   HOST, PORT              default 0.0.0.0 and 8001
#   MAX_LORAS               adapters in one batch on the GPU (default 8)
#   MAX_LORA_RANK           largest adapter rank `r` served (default 64; one of 8 16 32 64 128 256 ...)
#   MAX_CPU_LORAS           adapters kept in host memory for fast swapping (default 32, >= MAX_LORAS)
#   GPU_MEMORY_UTILIZATION  default 0.90
#   MAX_MODEL_LEN           context length cap (default: the model's)
#   VLLM_API_KEY            read by vLLM itself (kept off the command line): if set, requests need it;
#                           give the gateway `engine.upstream.api_key_env: VLLM_API_KEY`
set -euo pipefail

if [[ -z "${BASE_MODEL:-}" && -n "${BASE_REF:-}" ]]; then
  # `llmops models show` prints aligned `key: value` lines: `ref:` is NAME/VERSION, `source:` the weights.
  shown="$(NO_COLOR=1 llmops models show "${BASE_REF}")"
  BASE_MODEL="$(awk '$1 == "source:" {sub(/^source:[ \t]+/, ""); print; exit}' <<<"${shown}")"
  SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-$(awk '$1 == "ref:" {print $2; exit}' <<<"${shown}")}"
  if [[ -z "${REVISION:-}" ]]; then
    REVISION="$(awk '$1 == "revision:" {print $2; exit}' <<<"${shown}")"
  fi
fi
if [[ -z "${BASE_MODEL:-}" ]]; then
  echo "usage: BASE_MODEL=PATH_OR_HUB_ID [SERVED_MODEL_NAME=NAME/VERSION] [PORT=8001] $0 [vllm serve args...]" >&2
  echo "   or: BASE_REF=NAME@ALIAS [PORT=8001] $0 [vllm serve args...]" >&2
  exit 2
fi

SERVED_MODEL_NAME="${SERVED_MODEL_NAME:-${BASE_MODEL}}"
MAX_LORAS="${MAX_LORAS:-8}"
MAX_CPU_LORAS="${MAX_CPU_LORAS:-32}"
if (( MAX_CPU_LORAS < MAX_LORAS )); then
  MAX_CPU_LORAS="${MAX_LORAS}"
fi

args=(
  --host "${HOST:-0.0.0.0}"
  --port "${PORT:-8001}"
  --served-model-name "${SERVED_MODEL_NAME}"
  --enable-lora
  --max-loras "${MAX_LORAS}"
  --max-lora-rank "${MAX_LORA_RANK:-64}"
  --max-cpu-loras "${MAX_CPU_LORAS}"
  --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.90}"
)
if [[ -n "${REVISION:-}" ]]; then
  args+=(--revision "${REVISION}")
fi
if [[ -n "${MAX_MODEL_LEN:-}" ]]; then
  args+=(--max-model-len "${MAX_MODEL_LEN}")
fi

# Runtime adapter loading (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) is off unless this is set.
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True

exec vllm serve "${BASE_MODEL}" "${args[@]}" "$@"
