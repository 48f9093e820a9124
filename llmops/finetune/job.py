"""The fine-tune job: set up one process of a launch, resume, train, then save or register.

One code path for every scale: the job runs in each process that `accelerate launch` or
`torchrun` starts (or in-process for one), and accelerate wraps the model for DDP, FSDP or
DeepSpeed. Only rank 0 logs to MLflow, prints and registers. The loop itself is in `loop.py`,
what the run leaves behind (params, adapter folder, registry version) in `registration.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from llmops.finetune import FinetuneError
from llmops.finetune.loop import FinetuneResult
from llmops.finetune.schema import FinetuneConfig, load_finetune_config

__all__ = ["FinetuneResult", "run_finetune", "prepare_data", "key_location", "run_dir_of"]


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


def _compat_digest(config: FinetuneConfig, global_batch: int) -> str:
    """Digest of what must stay equal for a resume to continue the same run."""
    from llmops.registry.digest import json_digest

    data = config.resolved()
    for section in ("checkpoint", "register", "tracking", "distributed"):
        data.pop(section, None)
    for key in ("log_every", "eval_every"):
        data["training"].pop(key, None)
    return json_digest({"config": data, "global_batch": global_batch})


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
    def __init__(self, config: FinetuneConfig, config_path: Path, console: Any,
                 extra_tags: Optional[dict[str, str]] = None):
        self.config = config
        self.extra_tags = dict(extra_tags or {})
        self.config_path = config_path
        self.console = console
        self.run_dir = run_dir_of(config)

    def where(self, key: str) -> str:
        return key_location(self.config_path, key)

    def run(self) -> FinetuneResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs
        from datetime import timedelta

        from llmops.finetune.loop import TrainingLoop, lr_lambda
        from llmops.finetune.model import (
            add_adapter, load_model, load_tokenizer, quiet_transformers, resolve_attention, resolve_base, weights_dtype,
        )
        from llmops.finetune.registration import log_start, register_finetune, save_adapter

        config = self.config
        cuda = torch.cuda.is_available()
        if not cuda and config.training.cpu_threads:
            torch.set_num_threads(config.training.cpu_threads)
        quiet_transformers()
        dtype = weights_dtype(config, cuda)
        try:
            attention, _ = resolve_attention(config.model.attn_implementation, cuda)
        except FinetuneError as error:
            raise FinetuneError(f"{self.where('model.attn_implementation')}: {str(error).split(': ', 1)[1]}") from None
        # Varlen FlashAttention costs per example, so it packs full rows; sdpa/eager pay for row length.
        self.row_capacity = config.data.max_seq_len if attention.startswith("flash_attention") else 0
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

        model = load_model(base, config, dtype, self.where("model.base"), attention)
        fsdp = accelerator.distributed_type.name == "FSDP"
        model = add_adapter(model, config, config.training.seed, keep_adapter_fp32=not fsdp)
        if checkpoint:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_adapter_state(checkpoint))
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.training.lr, weight_decay=config.training.weight_decay,
                                      fused=cuda or None)
        warmup = config.training.warmup_steps or int(config.training.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.training.schedule, warmup, total_steps))
        if accelerator.distributed_type.name == "DEEPSPEED":
            ds = accelerator.state.deepspeed_plugin.deepspeed_config
            if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                ds["train_micro_batch_size_per_gpu"] = config.training.batch_size
        model, optimizer = accelerator.prepare(model, optimizer)
        if checkpoint:
            from llmops.finetune.checkpoint import load_checkpoint

            load_checkpoint(accelerator, checkpoint, optimizer, scheduler)

        from llmops.finetune.tracking import RunTracker

        tracker = RunTracker(
            enabled=main,
            experiment=config.tracking.experiment or f"finetune-{config.name}",
            run_name=config.tracking.run_name or str(config.name),
            run_id=state.run_id if state else None,
        )
        status = "FAILED"
        try:
            if main:
                log_start(config, self.run_dir, tracker, data, base, resumed=state is not None,
                          total_steps=total_steps, world=world, global_batch=global_batch)
            loop = TrainingLoop(config, accelerator, self.run_dir, self.row_capacity, self.console)
            result = loop.run(model, optimizer, scheduler, plan, data, tracker, state, compat, global_batch)
            result.world_size = world
            folder = save_adapter(config, self.run_dir, accelerator, model, tokenizer, data)
            if main and register:
                version = register_finetune(config, self.config_path, folder, data, base, tracker, result,
                                                self.extra_tags)
                result.version, result.alias = version.ref, config.register.alias
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
