"""How long a short chat waits behind one request with many sequences, in the transformers engine.

One "big" request (`--big` sequences of `--big-tokens` tokens, as a completions request with many
prompts times `n` becomes) starts first and fills the batch; once it runs, a "chat" of `--chat-tokens`
tokens arrives. Two ways, same engine, same model, greedy, torch on one thread:

- baseline: every sequence in one group, which is what first-come-first-served admission does;
- llmops: one group per request (`GenerationRequest.group`), so the chat is admitted at once by
  preemption (`engines/scheduler.py`).

Prints the chat's latency and the big request's throughput (tokens/s; preemption recomputes a few
sequences, so this shows what fairness costs) for each, and ends with `ratio=<baseline chat latency /
llmops chat latency> target=10 big_throughput_ratio=<llmops / baseline>`. Two runs on the shared
2-core box with the defaults: chat 11.9 s -> 0.11 s and 7.9 s -> 0.05 s; big_throughput_ratio 1.23 and
0.79 (one preempted sequence is recomputed; the spread is the box's noise).

    python benchmarks/engine_fairness.py [--big 256] [--big-tokens 64] [--chat-tokens 16] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


async def _run(engine, args, fair: bool) -> tuple[float, float]:
    from llmops.gateway.engines.base import GenerationRequest, SamplingParams

    async def drain(request) -> int:
        count = 0
        async for _ in engine.generate(request):
            count += 1
        return count

    shared = object()
    big_group = object() if fair else shared
    prompt = engine.encode_text("Write about the sea, the ships and the harbour.")
    started = time.perf_counter()
    big = [asyncio.ensure_future(drain(GenerationRequest(
        f"big-{i}", prompt, SamplingParams(max_tokens=args.big_tokens, ignore_eos=True), group=big_group)))
        for i in range(args.big)]
    while engine.stats()["running"] < min(args.batch, args.big):
        await asyncio.sleep(0.001)
    chat_start = time.perf_counter()
    await drain(GenerationRequest("chat", engine.encode_text("Hi, how are you?"),
                                  SamplingParams(max_tokens=args.chat_tokens, ignore_eos=True),
                                  group=object() if fair else shared))
    chat_seconds = time.perf_counter() - chat_start
    tokens = sum(await asyncio.gather(*big))
    return chat_seconds, tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=256)
    parser.add_argument("--big-tokens", type=int, default=64)
    parser.add_argument("--chat-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch

    from llmops.gateway.engines.transformers import TransformersEngine
    from llmops.tiny_model import create_tiny_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        path = create_tiny_model(Path(folder) / "tiny")
        engine = TransformersEngine(path, device="cpu", max_batch_size=args.batch)
        print(f"tiny model, cpu, torch {torch.__version__}, python {platform.python_version()}, "
              f"batch {args.batch}, big {args.big} x {args.big_tokens} tokens, chat {args.chat_tokens} tokens")
        results = []
        for name, fair in (("baseline (one queue)", False), ("llmops (fair)", True)):
            chat, rate = asyncio.run(_run(engine, args, fair))
            results.append((chat, rate))
            print(f"{name:22s} chat latency {chat * 1000:8.1f} ms   big request {rate:8.0f} tokens/s")
        asyncio.run(engine.close())
    (base_chat, base_rate), (fair_chat, fair_rate) = results
    print(f"ratio={base_chat / fair_chat:.1f} target=10 big_throughput_ratio={fair_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
