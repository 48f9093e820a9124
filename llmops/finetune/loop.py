"""The training loop of a fine-tune: micro-batches, loss, optimizer steps, eval, checkpoints, progress.

The loop is our own rather than transformers' `Trainer` because it is measurably faster here
(`benchmarks/finetune_throughput.py`): logits are computed only at positions that predict a
trained token, micro-batches are packed or length-grouped inside each optimizer step, and the loss
is normalised by the step's trained tokens over all processes and micro-batches, so 2 processes x
batch 4 give the gradient of 1 process x batch 8.

`job.py` builds what the loop needs (accelerator, model, optimizer, data plan, tracker) and hands
it over; registration lives in `registration.py`.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmops.finetune.schema import FinetuneConfig

__all__ = ["FinetuneResult", "TrainingLoop", "lr_lambda", "adapter_state"]


@dataclass
class FinetuneResult:
    """What a finished fine-tune reports (also written to `<run dir>/result.json`)."""

    run_dir: str
    steps: int
    final_loss: float
    losses: list[float]
    eval_loss: Optional[float]
    tokens_per_s: float
    """Non-padding tokens per second of wall-clock training time (all processes together)."""
    tokens_per_cpu_s: float
    """The same per second of this process's CPU time (steadier than wall time on a shared machine)."""
    run_id: Optional[str]
    version: Optional[str]
    """The registered `name/VERSION`, when registered."""
    alias: Optional[str]
    resumed_from_step: int = 0
    world_size: int = 1


def lr_lambda(schedule: str, warmup: int, total: int):
    """The learning-rate factor of `schedule` (constant, linear, cosine) after `warmup` linear steps."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adapter_state(accelerator: Any, model: Any) -> dict:
    """The trainable weights (gathered from every process under FSDP/DeepSpeed; collective)."""
    from peft import get_peft_model_state_dict

    full = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unwrapped, state_dict=full).items()}


class LossComputer:
    """Summed token cross-entropy of a micro-batch, computing logits only where a trained token is predicted."""

    def __init__(self, model: Any):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.keep_supported = "logits_to_keep" in inspect.signature(base.forward).parameters

    def __call__(self, model: Any, batch: dict[str, Any], device: Any):
        import torch
        import torch.nn.functional as F

        kwargs = {
            "input_ids": batch["input_ids"].to(device),
            "position_ids": batch["position_ids"].to(device),
            "use_cache": False,
        }
        if batch["attention_mask"] is not None:
            kwargs["attention_mask"] = batch["attention_mask"].to(device)
        labels = batch["shift_labels"].to(device)
        if self.keep_supported:
            keep = batch["keep"].to(device)
            kwargs["logits_to_keep"] = keep
            labels = labels[:, keep]
        logits = model(**kwargs).logits
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
        ), torch.count_nonzero(labels != -100)


class TrainingLoop:
    """Runs the optimizer steps of one process; rank 0 also logs, checkpoints' state file and progress."""

    def __init__(self, config: FinetuneConfig, accelerator: Any, run_dir: Path, row_capacity: int, console: Any = None):
        self.config = config
        self.accelerator = accelerator
        self.run_dir = run_dir
        self.row_capacity = row_capacity
        self.console = console

    def run(self, model, optimizer, scheduler, plan, data, tracker, state, compat: str, global_batch: int) -> FinetuneResult:
        """Train from `state` (a resumed checkpoint's, or None) to the plan's last step; returns the result."""
        import torch

        from llmops.finetune.batching import collate
        from llmops.finetune.checkpoint import TrainState, prune_checkpoints, save_checkpoint

        config, accelerator = self.config, self.accelerator
        training = config.training
        world, rank = accelerator.num_processes, accelerator.process_index
        accumulation = training.gradient_accumulation
        pad_id = data.tokenizer.pad_token_id
        loss_of = LossComputer(accelerator.unwrap_model(model))
        device = accelerator.device
        start_step = state.step if state else 0
        tokens_seen = state.tokens_seen if state else 0
        elapsed_before = state.elapsed_s if state else 0.0
        losses: list[float] = []
        last_loss = state.last_loss if state else float("nan")
        eval_loss = None
        total_steps = plan.total_steps
        checkpoints = self.run_dir / "checkpoints"
        progress = self._progress(total_steps, start_step)
        started, cpu_started, tokens_at_start = time.perf_counter(), time.process_time(), tokens_seen
        window_tokens, window_start = 0, time.perf_counter()
        tokens_per_s = 0.0
        model.train()
        try:
            for step in range(start_step, total_steps):
                step_plan = plan.step(step)
                step_tokens = sum(plan.examples[i].length for i in step_plan.indices)
                step_loss = torch.zeros((), device=device)
                for indices in plan.micro_batches(step_plan, rank, world, accumulation):
                    weight = 1.0
                    if not indices:  # a short last step: every process must still join the collectives
                        indices, weight = step_plan.indices[:1], 0.0
                    batch = collate([plan.examples[i] for i in indices], pad_id, config.data.packing, self.row_capacity)
                    with accelerator.accumulate(model):
                        loss_sum, _ = loss_of(model, batch, device)
                        # Sum over the step's trained tokens / their global count; x world undoes the
                        # gradient averaging of DDP/FSDP, x accumulation the 1/accumulation of accelerate.
                        loss = loss_sum * (weight * world * accumulation / max(1, step_plan.trained_tokens))
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and training.max_grad_norm is not None:
                            accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    step_loss += loss_sum.detach() * weight
                scheduler.step()
                total_loss = accelerator.reduce(step_loss, reduction="sum") if world > 1 else step_loss
                last_loss = float(total_loss) / max(1, step_plan.trained_tokens)
                losses.append(last_loss)
                tokens_seen += step_tokens
                window_tokens += step_tokens
                done = step + 1
                now = time.perf_counter()
                if now - window_start > 0:
                    tokens_per_s = window_tokens / (now - window_start)
                if done % training.log_every == 0 or done == total_steps:
                    tracker.log_metrics({
                        "loss": last_loss,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "tokens_per_s": tokens_per_s,
                        "epoch": step_plan.epoch,
                    }, step=done)
                    window_tokens, window_start = 0, now
                if progress is not None:
                    progress.update(progress.task_ids[0], completed=done, loss=f"{last_loss:.4f}", tps=f"{tokens_per_s:,.0f}")
                if data.eval is not None and training.eval_every and done % training.eval_every == 0 and done != total_steps:
                    eval_loss = self._evaluate(model, data, loss_of, pad_id)
                    tracker.log_metrics({"eval_loss": eval_loss}, step=done, flush=True)
                    model.train()
                if config.checkpoint.every and done % config.checkpoint.every == 0 and done != total_steps:
                    # Only rank 0 writes state.json, and only rank 0 knows the MLflow run id.
                    train_state = TrainState(done, total_steps, global_batch, world, compat, tracker.run_id,
                                             tokens_seen, elapsed_before + time.perf_counter() - started, last_loss)
                    weights = adapter_state(accelerator, model)
                    save_checkpoint(accelerator, checkpoints, train_state, weights, optimizer, scheduler)
                    if accelerator.is_main_process:
                        prune_checkpoints(checkpoints, config.checkpoint.keep)
                    tracker.flush()
        finally:
            if progress is not None:
                progress.stop()
        if data.eval is not None:
            eval_loss = self._evaluate(model, data, loss_of, pad_id)
            tracker.log_metrics({"eval_loss": eval_loss}, step=total_steps, flush=True)
        tracker.flush()
        run_time = elapsed_before + time.perf_counter() - started
        cpu_time = time.process_time() - cpu_started
        return FinetuneResult(
            run_dir=str(self.run_dir),
            steps=total_steps,
            final_loss=last_loss,
            losses=losses,
            eval_loss=eval_loss,
            tokens_per_s=tokens_seen / run_time if run_time > 0 else 0.0,
            tokens_per_cpu_s=(tokens_seen - tokens_at_start) / cpu_time if cpu_time > 0 else 0.0,
            run_id=tracker.run_id,
            version=None,
            alias=None,
            resumed_from_step=start_step,
        )

    def _progress(self, total: int, start: int):
        if not self.accelerator.is_main_process:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        console = self.console or Console(stderr=True)
        progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        progress.add_task("train", total=total, completed=start, loss="-", tps="-")
        progress.start()
        return progress

    def _evaluate(self, model, data, loss_of, pad_id) -> float:
        """Mean token loss over the eval split; every process runs the same number of forwards."""
        import torch

        from llmops.finetune.batching import collate

        accelerator = self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        examples = data.eval.examples
        size = self.config.training.batch_size
        mine = sorted(range(rank, len(examples), world), key=lambda i: -examples[i].length)
        batches = math.ceil(math.ceil(len(examples) / world) / size)
        total = torch.zeros((), device=accelerator.device)
        count = torch.zeros((), device=accelerator.device)
        model.eval()
        with torch.no_grad():
            for b in range(batches):
                indices = mine[b * size:(b + 1) * size]
                weight = 1.0
                if not indices:
                    indices, weight = [0], 0.0
                batch = collate([examples[i] for i in indices], pad_id, self.config.data.packing, self.row_capacity)
                loss_sum, n = loss_of(model, batch, accelerator.device)
                total += loss_sum * weight
                count += n * weight
        if world > 1:
            total = accelerator.reduce(total, reduction="sum")
            count = accelerator.reduce(count, reduction="sum")
        return float(total / count.clamp(min=1))
