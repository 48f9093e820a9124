"""Shared set-up of the gateway benchmarks: a work folder with the tiny model, a LoRA adapter, a
registry holding tiny@production and capitals@production, and helpers to start servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

QUESTIONS = [f"What is the capital of {c}?" for c in (
    "France", "Japan", "Kenya", "Peru", "Italy", "Spain", "Chile", "Egypt",
    "Norway", "Canada", "Brazil", "India", "Ghana", "Cuba", "Iran", "Laos")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_workdir(workdir: Path) -> dict:
    """Build the tiny model and a random-init LoRA adapter, register both, merge a copy for baselines."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops import registry
    from llmops.tiny_model import create_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    base = create_tiny_model(workdir / "tiny", overwrite=True)
    torch.manual_seed(1)
    lora = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(workdir / "adapter")
    registry.register_base_model("tiny", base)
    registry.set_model_alias("tiny", "production", 1)
    registry.register_adapter("capitals", workdir / "adapter", base="tiny/1", alias="production")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), workdir / "adapter").merge_and_unload()
    merged.save_pretrained(workdir / "merged")
    AutoTokenizer.from_pretrained(base).save_pretrained(workdir / "merged")
    registry.register_adapter("capitals-merged", workdir / "merged", base="tiny/1", kind="merged", alias="production")
    return {"base": base, "adapter": workdir / "adapter", "merged": workdir / "merged"}


def start_gateway(workdir: Path, port: int, tracing: bool = True, extra: tuple = (),
                  models: str = "capitals@production") -> subprocess.Popen:
    """`llmops serve` in `workdir` (its registry) with torch on one thread."""
    config = workdir / "gateway.yaml"
    config.write_text(
        f"models: [{models}]\n"
        "engine: {num_threads: 1, max_batch_size: 32}\n"
        f"tracing: {{enabled: {str(tracing).lower()}, experiment: bench}}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from llmops.cli import main; main()", "serve", "--config", str(config),
         "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / f"gateway-{port}.log", "w"))


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    import signal

    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
