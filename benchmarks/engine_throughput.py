"""Throughput of the gateway's transformers engine: 16 concurrent chat requests through `llmops serve`
(tracing on) against (a) the same 16 requests one at a time through plain `model.generate` on the same
model (base + adapter, in this process) and (b) `transformers serve --continuous-batching` serving the
same model merged. All greedy, same prompts, same max_tokens; torch on one thread everywhere.

    python benchmarks/engine_throughput.py [--rounds 3] [--max-tokens 64] [--workdir DIR]

At `--max-tokens 32` the requests' fixed costs (HTTP, arrivals spread over ~100 ms on a 2-core box that
also runs the client) weigh twice as much. Numbers on a shared 2-core box move by +-30% between runs.

The gateway serves the adapter (`capitals@production`, peft, unmerged: the route that lets adapters and
the base share one batch) and the merged weights registered as `capitals-merged` (kind `merged`).
Prints generated tokens per second for each and ends with `ratio=<gateway adapter route / (a)> target=4
ratio_vs_transformers_serve=<gateway merged / (b)> target_vs_transformers_serve=1`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gateway_setup import QUESTIONS, free_port, prepare_workdir, start_gateway, stop, wait_ready  # noqa: E402


def _burst(base_url: str, model: str, max_tokens: int) -> tuple[int, float]:
    """16 concurrent chat requests; (completion tokens, seconds)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)

    def ask(question: str) -> int:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                               max_tokens=max_tokens, temperature=0)
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        list(pool.map(ask, QUESTIONS[:2]))  # warm-up (connections, first forward)
        started = time.perf_counter()
        tokens = sum(pool.map(ask, QUESTIONS))
        return tokens, time.perf_counter() - started


def _measure_server(base_url: str, model: str, max_tokens: int, rounds: int) -> tuple[float, int]:
    rates, tokens = [], 0
    for _ in range(rounds):
        tokens, seconds = _burst(base_url, model, max_tokens)
        rates.append(tokens / seconds)
    return statistics.median(rates), tokens


def _sequential_generate(paths: dict, max_tokens: int, rounds: int) -> tuple[float, int]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(paths["base"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["base"]), paths["adapter"]).eval()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True) for q in QUESTIONS]

    def one(encoded) -> int:
        with torch.inference_mode():
            out = model.generate(**encoded, max_new_tokens=max_tokens, do_sample=False)
        return out.shape[1] - encoded["input_ids"].shape[1]

    one(prompts[0])  # warm-up
    rates, tokens = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        tokens = sum(one(p) for p in prompts)
        rates.append(tokens / (time.perf_counter() - started))
    return statistics.median(rates), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    paths = prepare_workdir(workdir)

    port = free_port()
    gateway = start_gateway(workdir, port, tracing=True, models="capitals@production, capitals-merged@production")
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", gateway)
        ours, our_tokens = _measure_server(f"http://127.0.0.1:{port}/v1", "capitals@production", args.max_tokens,
                                           args.rounds)
        ours_merged, merged_tokens = _measure_server(f"http://127.0.0.1:{port}/v1", "capitals-merged@production",
                                                     args.max_tokens, args.rounds)
    finally:
        stop(gateway)

    plain, plain_tokens = _sequential_generate(paths, args.max_tokens, args.rounds)

    port = free_port()
    serve = subprocess.Popen(
        ["transformers", "serve", str(paths["merged"]), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
         "--continuous-batching", "--cb-num-blocks", "64", "--cb-block-size", "32", "--cb-max-batch-tokens", "512"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=open(workdir / "transformers-serve.log", "w"))
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", serve)
        theirs, their_tokens = _measure_server(f"http://127.0.0.1:{port}/v1", str(paths["merged"]), args.max_tokens,
                                               args.rounds)
    finally:
        stop(serve)

    import torch
    import transformers

    print(f"conditions: 16 concurrent chat requests, greedy, max_tokens={args.max_tokens}, rounds={args.rounds} "
          f"(median), tiny Llama + LoRA r=8, torch threads=1, cpu={platform.processor() or platform.machine()} "
          f"x{os.cpu_count()}, torch={torch.__version__}, transformers={transformers.__version__}")
    print(f"{'system':<52} {'tokens':>7} {'tokens/s':>9}")
    print(f"{'llmops gateway (transformers engine, tracing on)':<52} {our_tokens:>7} {ours:>9.1f}")
    print(f"{'llmops gateway, merged version (kind=merged)':<52} {merged_tokens:>7} {ours_merged:>9.1f}")
    print(f"{'(a) plain generate (base + adapter), one at a time':<52} {plain_tokens:>7} {plain:>9.1f}")
    print(f"{'(b) transformers serve --continuous-batching':<52} {their_tokens:>7} {theirs:>9.1f}")
    # (a) runs the adapter unmerged, as the gateway's adapter route does; (b) serves merged weights, so it is
    # compared with the gateway serving the same merged weights. The adapter route against (b) is shown too.
    print(f"ratio={ours / plain:.2f} target=4 ratio_vs_transformers_serve={ours_merged / theirs:.2f} "
          f"target_vs_transformers_serve=1 adapter_route_vs_transformers_serve={ours / theirs:.2f}")


if __name__ == "__main__":
    main()
