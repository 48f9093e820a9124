"""The fine-tune job: train a LoRA adapter as configured, checkpoint, track in MLflow, register.

One code path for every scale: the job runs in each process that `accelerate launch` or
`torchrun` starts (or in-process for one), and accelerate wraps the model for DDP, FSDP or
DeepSpeed. Only rank 0 logs to MLflow, prints and registers.

The loop is our own rather than transformers' `Trainer` because it is measurably faster here
(`benchmarks/finetune_throughput.py`): logits are computed only at positions that predict a
trained token, micro-batches are packed or length-grouped inside each optimizer step, and the loss
is normalised by the step's trained tokens over all processes and micro-batches, so 2 processes x
batch 4 give the gradient of 1 process x batch 8.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from llmops.finetune import FinetuneError
from llmops.finetune.schema import FinetuneConfig, load_finetune_config

__all__ = ["FinetuneResult", "run_finetune", "prepare_data", "key_location", "run_dir_of"]


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


# -------------------------------------------------------------------------------------------- helpers


def key_location(config_path: Path, dotted: str) -> str:
    """`file:line: key` for messages about a key of the config file (line omitted when not in the file)."""
    import yaml

    try:
        node = yaml.compose(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        node = None
    line = None
    for part in dotted.split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return f"{config_path}:{line}: {dotted}" if line else f"{config_path}: {dotted}"


def run_dir_of(config: FinetuneConfig) -> Path:
    """The run folder: `checkpoint.dir`, else `runs/<name>` in the working directory."""
    return Path(config.checkpoint.dir) if config.checkpoint.dir else Path.cwd() / "runs" / str(config.name)


def _git_commit(folder: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _compat_digest(config: FinetuneConfig, global_batch: int) -> str:
    """Digest of what must stay equal for a resume to continue the same run."""
    from llmops.registry.digest import json_digest

    data = config.resolved()
    for section in ("checkpoint", "register", "tracking", "distributed"):
        data.pop(section, None)
    for key in ("log_every", "eval_every"):
        data["training"].pop(key, None)
    return json_digest({"config": data, "global_batch": global_batch})


def _lr_lambda(schedule: str, warmup: int, total: int):
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


@dataclass
class PreparedData:
    tokenizer: Any
    formatter: Any
    train: Any
    eval: Any
    chat: bool

    @property
    def fingerprint(self) -> dict[str, Any]:
        return {
            "train": self.train.fingerprint,
            "eval": self.eval.fingerprint if self.eval else None,
            "prompt_version": self.formatter.prompt_version,
            "format": "chat" if self.chat else "text",
        }


def prepare_data(config: FinetuneConfig, tokenizer: Any) -> PreparedData:
    """Format and tokenize the train (and eval) split.

    Raises:
        FinetuneError: bad rows, empty files, unknown prompt (file, line and key named).
    """
    from llmops.finetune.data import load_split, make_formatter, uses_chat

    formatter = make_formatter(config.data)
    train = load_split(Path(config.data.train), "data.train", tokenizer, formatter, config.data)
    evaluation = None
    if config.data.eval is not None:
        evaluation = load_split(Path(config.data.eval), "data.eval", tokenizer, formatter, config.data)
    return PreparedData(tokenizer, formatter, train, evaluation, uses_chat(tokenizer, config.data))


# ----------------------------------------------------------------------------------------------- loss


class _LossComputer:
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


# ------------------------------------------------------------------------------------------------ job


def run_finetune(config_path: str | Path, overrides: Iterable[str] = (), console: Any = None,
                 extra_tags: Optional[dict[str, str]] = None) -> FinetuneResult:
    """Run the fine-tune of `config_path` in this process (one rank of a launch, or the only one).

    Args:
        config_path: the YAML config.
        overrides: `key.sub=value` overrides.
        console: a rich console for the progress bar (rank 0); default stderr.
        extra_tags: more tags for the registered version (`llmops reproduce` adds `llmops.reproduces`).

    Returns:
        The result (on every rank; `version` is set on rank 0 when registered).

    Raises:
        ConfigError, FinetuneError: invalid config, data or base model; nothing is registered.
    """
    config_path = Path(config_path)
    config = load_finetune_config(config_path, overrides)
    return _Job(config, config_path, console, extra_tags).run()


class _Job:
    def __init__(self, config: FinetuneConfig, config_path: Path, console: Any, extra_tags: Optional[dict[str, str]] = None):
        self.config = config
        self.extra_tags = dict(extra_tags or {})
        self.config_path = config_path
        self.console = console
        self.run_dir = run_dir_of(config)
        # Varlen FlashAttention costs per example, so it packs full rows; sdpa/eager pay for row length.
        flash = config.model.attn_implementation.startswith("flash_attention")
        self.row_capacity = config.data.max_seq_len if flash else 0

    def where(self, key: str) -> str:
        return key_location(self.config_path, key)

    def run(self) -> FinetuneResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
        from datetime import timedelta

        from llmops.finetune.model import add_adapter, load_model, load_tokenizer, quiet_transformers, resolve_base, weights_dtype

        config = self.config
        cuda = torch.cuda.is_available()
        if not cuda and config.training.cpu_threads:
            torch.set_num_threads(config.training.cpu_threads)
        quiet_transformers()
        dtype = weights_dtype(config, cuda)
        mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
        accelerator_kwargs: dict[str, Any] = {
            "cpu": not cuda,
            "gradient_accumulation_steps": config.training.gradient_accumulation,
            "kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=config.distributed.timeout_s))],
        }
        if "ACCELERATE_MIXED_PRECISION" not in os.environ:  # an accelerate config file decides otherwise
            accelerator_kwargs["mixed_precision"] = mixed
        accelerator = Accelerator(**accelerator_kwargs)
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        if accelerator.num_processes != expected:
            # Without cpu=True accelerate silently runs N independent single-process jobs on CPU.
            raise FinetuneError(
                f"launched as {expected} processes but accelerate sees {accelerator.num_processes}; "
                "on CPU launch with `llmops finetune --num-processes N` or torchrun"
            )
        self.accelerator = accelerator
        main = accelerator.is_main_process
        register = config.register.enabled

        base = resolve_base(config, self.where("model.base"), need_registry=register)
        tokenizer = load_tokenizer(base, config, self.where("model.base"))
        data = prepare_data(config, tokenizer)

        from llmops.finetune.batching import DataPlan

        world = accelerator.num_processes
        global_batch = config.training.batch_size * config.training.gradient_accumulation * world
        plan = DataPlan(data.train.examples, global_batch, config.training.seed, config.training.epochs,
                        config.training.max_steps, config.data.shuffle)
        total_steps = plan.total_steps
        compat = _compat_digest(config, global_batch)

        checkpoint = self._find_resume(compat, global_batch)
        from llmops.finetune.checkpoint import load_adapter_state, read_state

        state = read_state(checkpoint) if checkpoint else None

        model = load_model(base, config, dtype, self.where("model.base"))
        fsdp = accelerator.distributed_type.name == "FSDP"
        model = add_adapter(model, config, config.training.seed, keep_adapter_fp32=not fsdp)
        if checkpoint:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_adapter_state(checkpoint))
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.training.lr, weight_decay=config.training.weight_decay,
                                      fused=cuda or None)
        warmup = config.training.warmup_steps or int(config.training.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.training.schedule, warmup, total_steps))
        if accelerator.distributed_type.name == "DEEPSPEED":
            ds = accelerator.state.deepspeed_plugin.deepspeed_config
            if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                ds["train_micro_batch_size_per_gpu"] = config.training.batch_size
        model, optimizer = accelerator.prepare(model, optimizer)
        if checkpoint:
            from llmops.finetune.checkpoint import load_checkpoint

            load_checkpoint(accelerator, checkpoint, optimizer, scheduler)

        from llmops.finetune.tracking import RunTracker, flatten

        tracker = RunTracker(
            enabled=main,
            experiment=config.tracking.experiment or f"finetune-{config.name}",
            run_name=config.tracking.run_name or str(config.name),
            run_id=state.run_id if state else None,
        )
        status = "FAILED"
        try:
            if main:
                self._log_start(tracker, data, base, flatten, state is not None, total_steps, world, global_batch)
            result = self._train(model, optimizer, scheduler, plan, data, tracker, state, compat, global_batch)
            result.world_size = world
            if main and register:
                version = self._register(model, tokenizer, data, base, tracker, result)
                result.version, result.alias = version.ref, config.register.alias
            else:
                self._save_adapter(model, tokenizer, data, result)
            if main:
                (self.run_dir / "result.json").write_text(json.dumps(asdict(result), indent=2))
            status = "FINISHED"
            return result
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker.end(status)
            accelerator.end_training()

    # ------------------------------------------------------------------------------------------ resume

    def _find_resume(self, compat: str, global_batch: int) -> Optional[Path]:
        from llmops.finetune.checkpoint import latest_checkpoint, read_state

        resume = self.config.checkpoint.resume
        if resume == "never":
            return None
        if resume == "auto":
            found = latest_checkpoint(self.run_dir / "checkpoints")
            if found is None:
                return None
        else:
            found = Path(resume)
            if not (found / "state.json").is_file():
                raise FinetuneError(f"{self.where('checkpoint.resume')}: {found} is not a checkpoint folder")
        state = read_state(found)
        if state.compat_digest != compat:
            raise FinetuneError(
                f"{self.where('checkpoint.resume')}: checkpoint {found} was written by a different config "
                f"(model, adapter, data, training or global batch {state.global_batch} vs {global_batch} differ); "
                "set checkpoint.resume=never or checkpoint.dir to start afresh"
            )
        return found

    # ---------------------------------------------------------------------------------------- tracking

    def _log_start(self, tracker, data, base, flatten, resumed, total_steps, world, global_batch) -> None:
        import yaml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = self.config.resolved()
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (self.run_dir / "dataset.json").write_text(json.dumps(data.fingerprint, indent=2))
        if resumed:
            return
        params = flatten(resolved)
        params.update({
            "run.world_size": str(world),
            "run.global_batch": str(global_batch),
            "run.total_steps": str(total_steps),
            "run.base_resolved": base.registry_ref or base.load_from,
        })
        tracker.log_params(params)
        tracker.log_artifact(self.run_dir / "config.yaml")
        tracker.log_artifact(self.run_dir / "dataset.json")

    # ---------------------------------------------------------------------------------------- training

    def _train(self, model, optimizer, scheduler, plan, data, tracker, state, compat, global_batch) -> FinetuneResult:
        import torch

        from llmops.finetune.batching import collate
        from llmops.finetune.checkpoint import TrainState, prune_checkpoints, save_checkpoint

        config, accelerator = self.config, self.accelerator
        training = config.training
        world, rank = accelerator.num_processes, accelerator.process_index
        accumulation = training.gradient_accumulation
        pad_id = data.tokenizer.pad_token_id
        loss_of = _LossComputer(accelerator.unwrap_model(model))
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
                    adapter_state = self._adapter_state(model)
                    save_checkpoint(accelerator, checkpoints, train_state, adapter_state, optimizer, scheduler)
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

    # ------------------------------------------------------------------------------------ registration

    def _adapter_state(self, model) -> dict:
        """The trainable weights (gathered from every process under FSDP/DeepSpeed; collective)."""
        from peft import get_peft_model_state_dict

        full = self.accelerator.get_state_dict(model)
        unwrapped = self.accelerator.unwrap_model(model)
        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unwrapped, state_dict=full).items()}

    def _save_adapter(self, model, tokenizer, data, result: FinetuneResult) -> Optional[Path]:
        """Save the final adapter, tokenizer and lineage files into `<run dir>/adapter` (rank 0 writes)."""
        import yaml

        accelerator = self.accelerator
        full = accelerator.get_state_dict(model)  # collective under FSDP/DeepSpeed
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            return None
        folder = self.run_dir / "adapter"
        folder.mkdir(parents=True, exist_ok=True)
        accelerator.unwrap_model(model).save_pretrained(folder, state_dict=full, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        lineage = folder / "llmops"
        lineage.mkdir(exist_ok=True)
        (lineage / "config.yaml").write_text(yaml.safe_dump(self.config.resolved(), sort_keys=False))
        (lineage / "dataset.json").write_text(json.dumps(data.fingerprint, indent=2))
        return folder

    def _register(self, model, tokenizer, data, base, tracker, result: FinetuneResult):
        from llmops.registry import register_adapter
        from llmops.registry.digest import json_digest

        folder = self._save_adapter(model, tokenizer, data, result)
        config = self.config
        tags = {
            "llmops.dataset_digest": json_digest(data.fingerprint),
            "llmops.config_digest": json_digest({k: v for k, v in config.resolved().items() if k != "checkpoint"}),
            "llmops.prompt_version": data.formatter.prompt_version,
            "llmops.git_commit": _git_commit(self.config_path.resolve().parent),
            "llmops.train_steps": str(result.steps),
            "llmops.final_loss": f"{result.final_loss:.6g}",
            "llmops.finetune_config": str(self.config_path),
        }
        if result.eval_loss is not None:
            tags["llmops.eval_loss"] = f"{result.eval_loss:.6g}"
        from llmops.lineage.record import dataset_lineage_tags

        tags.update(dataset_lineage_tags(data.fingerprint))  # data path, digest, DVC pointer
        tags.update(self.extra_tags)
        tracker.flush()
        version = register_adapter(
            config.model_name,
            folder,
            base=base.registry_ref,
            tags=tags,
            alias=config.register.alias,
            run_id=tracker.run_id,
            description=config.register.description,
            reason=f"fine-tune {config.name} (run {tracker.run_id})",
        )
        tracker.set_tags({"llmops.registered_version": version.ref})
        return version


def main_entry(config_path: str, overrides: list[str]) -> FinetuneResult:
    """Run the job and print the outcome on rank 0 (used by `python -m llmops.finetune` and the CLI)."""
    result = run_finetune(config_path, overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_result(result), flush=True)
    return result


def format_result(result: FinetuneResult) -> str:
    """The one-line summary the CLI prints."""
    head = f"trained {result.steps} steps, final loss {result.final_loss:.4f}"
    if result.eval_loss is not None:
        head += f", eval loss {result.eval_loss:.4f}"
    if result.version:
        alias = f", alias {result.alias}" if result.alias else ""
        return f"{head}\nregistered {result.version}{alias}"
    return f"{head}\nadapter saved in {Path(result.run_dir) / 'adapter'}"
