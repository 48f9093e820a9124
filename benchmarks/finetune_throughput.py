"""LoRA fine-tune throughput: llmops' job vs a plain transformers `Trainer` + peft baseline.

Both train the same model on the same data with the same LoRA settings, effective batch, steps,
learning rate and thread count. The baseline pads each batch to its longest row (the usual
`DataCollatorForSeq2Seq(padding=True)` set-up); llmops packs, groups by length inside each step and
computes logits only where a trained token is predicted. The measure is trained (non-padding)
tokens per second of the training loop (model loading and data preparation excluded for both).

The data set has varied lengths: chats whose user turn (3-250 words) and assistant turn (2-100 words)
have log-uniform lengths (many short, a long tail, like real instruction data; 14-512 tokens, mean
about 150), drawn from the tiny corpus; only the assistant turns are trained.

    OMP_NUM_THREADS=1 python benchmarks/finetune_throughput.py                       # tiny model, CPU
    python benchmarks/finetune_throughput.py --model-size 0.5b --device cuda         # needs a GPU

`--model-size 0.5b` builds a randomly initialised ~0.5B Llama-architecture model (no download).
`--device cuda` without a GPU prints a `skip:` line and exits 0. Each side runs `--repeat` times,
alternating, and the best run of each counts. On CPU with one thread the ratio is taken on the
CPU time of the training loop (`--clock cpu`): on a shared machine wall time measures the other
tenants, while one thread's CPU time is what the loop would take on an idle core; the wall-clock
ratio is printed too (`wall_ratio=`). Ends with `ratio=<llmops tokens/s over the baseline> target=1.5`
on CPU and `target=4` on CUDA (the GPU issue: packed >= 4x padded), plus `mfu=` on CUDA: llmops'
model FLOP utilisation, 4·N FLOPs per trained token (a LoRA step over frozen weights: 2N forward,
2N for the input gradients, no weight gradients; LoRA's own FLOPs and attention left out) over
the device's dense bf16 peak (datasheet for known devices), against the issue's 25%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def make_dataset(path: Path, rows: int, seed: int) -> None:
    from llmops.tiny_model import corpus_path

    words = corpus_path().read_text(encoding="utf-8").split()
    rng = random.Random(seed)

    def text(n: int) -> str:
        start = rng.randrange(0, len(words) - n)
        return " ".join(words[start:start + n])

    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            # Log-uniform lengths: many short chats and a long tail, as in real instruction data.
            user = text(int(math.exp(rng.uniform(math.log(3), math.log(250)))))
            answer = text(int(math.exp(rng.uniform(math.log(2), math.log(100)))))
            handle.write(json.dumps({"messages": [{"role": "user", "content": user},
                                                  {"role": "assistant", "content": answer}]}) + "\n")


def make_model(size: str, folder: Path) -> Path:
    from llmops.tiny_model import create_tiny_model

    tiny = create_tiny_model(folder / "tiny")
    if size == "tiny":
        return tiny
    # ~0.5B Llama-architecture model with random weights (Qwen2.5-0.5B-like shape), the tiny tokenizer.
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = folder / "llama-0.5b"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


BF16_DENSE_PEAKS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12}


def parameter_count(model_dir: Path) -> int:
    """Parameters of the base model (from its safetensors headers: nothing is loaded)."""
    import json as _json
    import struct

    total = 0
    for file in model_dir.glob("*.safetensors"):
        with file.open("rb") as handle:
            header = _json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
        for name, meta in header.items():
            if name != "__metadata__":
                total += math.prod(meta["shape"])
    return total


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_DENSE_PEAKS.items() if key in name), None)


def run_llmops(model_dir: Path, data: Path, work: Path, args) -> dict:
    import yaml

    from llmops.finetune.job import run_finetune

    config = {
        "name": "bench",
        "model": {"base": str(model_dir), "dtype": "auto"},
        "adapter": {"r": args.r, "alpha": 2 * args.r, "target_modules": "all-linear"},
        "data": {"train": str(data), "max_seq_len": args.max_seq_len, "loss_on": "assistant", "packing": args.packing},
        "training": {"max_steps": args.steps, "lr": 2e-4, "schedule": "constant", "batch_size": args.batch_size,
                     "gradient_accumulation": args.accumulation, "seed": 0, "log_every": 10,
                     "cpu_threads": args.threads},
        "checkpoint": {"dir": str(work / "llmops-run")},
        "register": {"enabled": False},
    }
    work.mkdir(parents=True, exist_ok=True)
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    result = run_finetune(path, [])
    return {"tokens_per_s": result.tokens_per_s, "tokens_per_cpu_s": result.tokens_per_cpu_s, "final_loss": result.final_loss}


def run_baseline(model_dir: Path, data: Path, work: Path, args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from llmops.finetune.data import read_jsonl

    hf_logging.set_verbosity_error()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = []
    for _, row in read_jsonl(data, "data"):
        out = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])[: args.max_seq_len]
        mask = list(out["assistant_masks"])[: args.max_seq_len]
        features.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    counted = {"tokens": 0}

    def collate(batch):  # pad to the longest row of the batch
        width = max(len(f["input_ids"]) for f in batch)
        counted["tokens"] += sum(len(f["input_ids"]) for f in batch)
        pad = tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in batch]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in batch]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in batch]),
        }

    bf16 = args.device == "cuda" and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 attn_implementation="sdpa")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules="all-linear",
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    training_args = TrainingArguments(
        output_dir=str(work / "baseline"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.accumulation, learning_rate=2e-4, lr_scheduler_type="constant",
        logging_steps=10, save_strategy="no", report_to=[], use_cpu=args.device == "cpu", bf16=bf16,
        dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=features, data_collator=collate)
    cpu_start = time.process_time()
    metrics = trainer.train().metrics
    cpu_s = time.process_time() - cpu_start
    return {"tokens_per_s": counted["tokens"] / metrics["train_runtime"], "tokens_per_cpu_s": counted["tokens"] / cpu_s,
            "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-size", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="time base of the ratio: CPU time of the training loop (default on CPU with 1 thread: "
                             "steady on a shared machine) or wall-clock time (default on GPU)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each; the best of each counts")
    parser.add_argument("--no-packing", dest="packing", action="store_false", help="llmops without packing (length grouping only)")
    args = parser.parse_args()

    import torch

    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("skip: --device cuda needs a CUDA GPU and none is visible")
        return 0
    if args.device == "cpu" and torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # llmops uses the GPU whenever it sees one
    import peft
    import transformers

    with tempfile.TemporaryDirectory(prefix="llmops-bench-") as tmp:
        work = Path(tmp)
        data = work / "chats.jsonl"
        make_dataset(data, args.rows, seed=0)
        model_dir = make_model(args.model_size, work)
        n_params = parameter_count(model_dir)
        device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.processor() or 'cpu'}, {args.threads} thread(s)"
        print(f"model={args.model_size} ({n_params / 1e6:.0f}M parameters) device={args.device} ({device_name}) torch={torch.__version__} "
              f"transformers={transformers.__version__} peft={peft.__version__}")
        print(f"data: {args.rows} chats of varied length (max_seq_len {args.max_seq_len}), loss on assistant turns; "
              f"LoRA r={args.r} all-linear; batch {args.batch_size} x accumulation {args.accumulation}; {args.steps} steps; "
              f"llmops packing={args.packing}")
        baseline, ours = [], []
        for attempt in range(1, args.repeat + 1):  # alternate: a shared machine slows whichever runs at a bad time
            b = run_baseline(model_dir, data, work, args)
            print(f"[{attempt}] baseline (Trainer + peft, pad to longest): {b['tokens_per_s']:,.0f} tokens/s wall, "
                  f"{b['tokens_per_cpu_s']:,.0f} tokens/cpu-s, final loss {b['final_loss']}")
            o = run_llmops(model_dir, data, work / f"llmops-{attempt}", args)
            print(f"[{attempt}] llmops finetune:                           {o['tokens_per_s']:,.0f} tokens/s wall, "
                  f"{o['tokens_per_cpu_s']:,.0f} tokens/cpu-s, final loss {o['final_loss']:.3f}")
            baseline.append(b)
            ours.append(o)
    key = "tokens_per_cpu_s" if args.clock == "cpu" else "tokens_per_s"
    best_baseline = max(r[key] for r in baseline)
    best_ours = max(r[key] for r in ours)
    wall_ratio = max(r["tokens_per_s"] for r in ours) / max(r["tokens_per_s"] for r in baseline)
    print(f"best of {args.repeat}, trained (non-padding) tokens per {'CPU second of the training loop' if args.clock == 'cpu' else 'wall-clock second'}: "
          f"baseline {best_baseline:,.0f}, llmops {best_ours:,.0f}")
    ratio = best_ours / best_baseline
    target = 4 if args.device == "cuda" else 1.5
    extra = ""
    if args.device == "cuda":
        peak = bf16_peak(device_name)
        best_wall = max(r["tokens_per_s"] for r in ours)
        mfu = f"{4 * n_params * best_wall / peak:.3f}" if peak else "nan"
        extra = f" mfu={mfu} mfu_target=0.25 flops_per_token=4N n_params={n_params}"
    print(f"ratio={ratio:.2f} target={target} clock={args.clock} wall_ratio={wall_ratio:.2f} llmops_tokens_per_s={best_ours:.0f} "
          f"baseline_tokens_per_s={best_baseline:.0f} model={args.model_size} device={args.device} threads={args.threads}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
