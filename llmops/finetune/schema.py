"""The fine-tune config: one YAML file, grouped sections, every key documented and validated.

    config = load_finetune_config("configs/finetune/quickstart.yaml", ["training.max_steps=20"])

Unknown keys, missing required keys and bad values are reported all at once with `file:line: key:`
(see `llmops.config`). Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from llmops.config import ConfigModel, ConfigPath, load_config

__all__ = [
    "FinetuneConfig",
    "ModelSection",
    "AdapterSection",
    "DataSection",
    "TrainingSection",
    "DistributedSection",
    "CheckpointSection",
    "RegisterSection",
    "TrackingSection",
    "ChatMessage",
    "load_finetune_config",
    "looks_like_path",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_path(text: str) -> bool:
    """True when `model.base` is written as a filesystem path (`./x`, `../x`, `/x`, `~/x`)."""
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


class ChatMessage(ConfigModel):
    """One message of an inline chat template."""

    role: Literal["system", "user", "assistant"]
    content: str


class ModelSection(ConfigModel):
    """The base model the adapter is trained on."""

    base: str
    """Registry reference (`tiny`, `tiny@production`, `tiny/1`), local folder (`./models/x`, `/abs/x`) or hub id (`org/name`)."""
    revision: Optional[str] = None
    """Hub revision (commit or tag) to pin when `base` is a hub id; ignored for registry refs (they pin their own)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight and compute dtype: `auto` is bfloat16 on a GPU that supports it, float32 on CPU."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] = "auto"
    """Attention kernel passed to transformers: `auto` is `flash_attention_2` where the flash-attn package is importable and a GPU is present, else `sdpa` (`llmops validate` prints the choice)."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository (only for bases you trust)."""

    @field_validator("base")
    @classmethod
    def _base_exists_when_a_path(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("empty; give a registry reference, a local folder or a hub id")
        if looks_like_path(value):
            path = Path(value).expanduser()
            base_dir = (info.context or {}).get("base_dir")
            if base_dir is not None and not path.is_absolute():
                path = Path(base_dir) / path
            if not path.is_dir():
                raise ValueError(f"local model folder {value} does not exist (looked for {path.resolve()})")
            if not (path / "config.json").is_file():
                raise ValueError(f"{path} is not a Hugging Face model folder (no config.json)")
            return str(path.resolve())
        return value


class AdapterSection(ConfigModel):
    """The LoRA adapter (peft `LoraConfig`)."""

    r: int = Field(16, gt=0)
    """LoRA rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (scale = alpha / r, or alpha / sqrt(r) with `rslora`)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: Union[Literal["all-linear"], list[str]] = "all-linear"
    """`all-linear` (every linear layer but the output head) or module names such as `[q_proj, v_proj]`."""
    modules_to_save: list[str] = []
    """Extra modules trained in full and saved with the adapter (e.g. `[embed_tokens]` after adding tokens)."""
    rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("empty list; name modules such as [q_proj, v_proj] or use all-linear")
        return value


class DataSection(ConfigModel):
    """Training data: JSONL files, how rows become examples, which tokens are trained."""

    train: ConfigPath
    """JSONL file of training rows: `{"messages": [...]}` or `{"prompt": ..., "completion": ...}` (or any fields with `template`/`prompt`)."""
    eval: Optional[ConfigPath] = None
    """JSONL file of evaluation rows (same format); its loss is logged as `eval_loss`."""
    max_seq_len: int = Field(gt=0)
    """Longest example in tokens (required); longer examples are truncated and counted by `--preview`."""
    loss_on: Literal["completion", "assistant", "all"] = "assistant"
    """Trained tokens: `completion` (the last assistant turn / the completion), `assistant` (every assistant turn), `all`. The end-of-turn token is always trained with the turn it closes."""
    packing: bool = True
    """Pack several examples into each row without attention across examples (position ids restart per example). Rows are as long as the micro-batch's longest example with sdpa/eager attention, `max_seq_len` with FlashAttention."""
    prompt: Optional[str] = None
    """Registry prompt (`NAME@ALIAS` or `NAME/VERSION`) that formats each row: the row's fields are its variables and `completion_field` is the answer."""
    template: Optional[Union[str, list[ChatMessage]]] = None
    """Inline Jinja template (text or chat messages) used like `prompt`, for data without a registry prompt."""
    completion_field: str = "completion"
    """Row field holding the answer when rows are formatted through `prompt` or `template`."""
    format: Literal["auto", "chat", "text"] = "auto"
    """`chat`: examples go through the tokenizer's chat template; `text`: prompt + completion + EOS; `auto`: chat when the tokenizer has a template."""
    shuffle: bool = True
    """Shuffle the training examples each epoch (seeded by `training.seed`)."""

    @field_validator("train", "eval")
    @classmethod
    def _file_exists(cls, value: Optional[Path]) -> Optional[Path]:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value.resolve() if value is not None else None

    @model_validator(mode="after")
    def _one_formatter(self):
        if self.prompt is not None and self.template is not None:
            raise ValueError("data.prompt and data.template both format rows; keep one")
        if self.prompt is not None:
            from llmops.errors import RegistryError
            from llmops.registry.refs import parse_ref

            try:
                parse_ref(self.prompt)
            except RegistryError as error:
                raise ValueError(f"data.prompt: {error}") from None
        return self


class TrainingSection(ConfigModel):
    """Optimisation."""

    epochs: int = Field(1, gt=0)
    """Passes over the training data (ignored when `max_steps` is set)."""
    max_steps: Optional[int] = Field(None, gt=0)
    """Stop after this many optimizer steps (the data repeats as needed); overrides `epochs`."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Warm-up as a fraction of all steps (instead of `warmup_steps`)."""
    batch_size: int = Field(8, gt=0)
    """Examples per micro-batch per process."""
    gradient_accumulation: int = Field(1, gt=0)
    """Micro-batches per optimizer step; the global batch is batch_size x gradient_accumulation x processes."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    """Gradient clipping norm; null disables clipping."""
    seed: int = 42
    """Seed of the adapter initialisation, dropout and data order."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% slower)."""
    eval_every: Optional[int] = Field(None, gt=0)
    """Compute the eval loss every N steps (and always at the end when `data.eval` is set)."""
    log_every: int = Field(1, gt=0)
    """Log loss, learning rate and tokens/s to MLflow every N steps."""
    cpu_threads: Optional[int] = Field(None, gt=0)
    """Torch threads per process on CPU (default: torch's, i.e. `OMP_NUM_THREADS` or the core count). Small models train fastest with 1."""

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("training.warmup_steps and training.warmup_ratio are both set; keep one")
        return self


class DistributedSection(ConfigModel):
    """Multi-process launch (the same file runs on one CPU, one GPU, N GPUs or several nodes)."""

    accelerate_config: Optional[ConfigPath] = None
    """An accelerate config file (`accelerate config` writes one) choosing DDP, FSDP or DeepSpeed, processes and nodes."""
    num_processes: Optional[int] = Field(None, gt=0)
    """Processes on this machine (default: the accelerate config's, else 1); `--num-processes` overrides it."""
    timeout_s: int = Field(1800, gt=0)
    """Collective-operation timeout (slow data loading on one rank must not kill the others)."""

    @field_validator("accelerate_config")
    @classmethod
    def _file_exists(cls, value: Optional[Path]) -> Optional[Path]:
        if value is not None and not value.is_file():
            raise ValueError(f"file {value} does not exist")
        return value


class CheckpointSection(ConfigModel):
    """Checkpoints for exact resume: adapter, optimizer, scheduler, RNG and data position."""

    dir: Optional[ConfigPath] = None
    """Output folder of the run (checkpoints, final adapter, resolved config); default `runs/<name>` in the working directory."""
    every: Optional[int] = Field(None, gt=0)
    """Save a checkpoint every N optimizer steps; null saves none."""
    keep: int = Field(2, gt=0)
    """Keep the newest K checkpoints."""
    resume: Union[Literal["auto", "never"], ConfigPath] = "never"
    """`auto`: continue from the newest checkpoint in `dir` if there is one; `never`; or a checkpoint folder."""

    @field_validator("resume", mode="before")
    @classmethod
    def _keyword_or_path(cls, value: Any) -> Any:
        if isinstance(value, str) and value in ("auto", "never"):
            return value
        if value is None or value is False:
            return "never"
        return Path(str(value))


class RegisterSection(ConfigModel):
    """Where the finished adapter goes in the model registry."""

    enabled: bool = True
    """Register the adapter when training succeeds (rank 0 only)."""
    name: Optional[str] = None
    """Registered model name; default: the config's `name`."""
    alias: Optional[str] = "candidate"
    """Alias moved to the new version (null: none)."""
    description: Optional[str] = None
    """Description of the new version."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from llmops.errors import RegistryError
            from llmops.registry.refs import check_name

            try:
                check_name(value, "model name")
            except RegistryError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("alias")
    @classmethod
    def _valid_alias(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from llmops.errors import RegistryError
            from llmops.registry.refs import check_alias

            try:
                check_alias(value)
            except RegistryError as error:
                raise ValueError(str(error)) from None
        return value


class TrackingSection(ConfigModel):
    """MLflow tracking of the run."""

    experiment: Optional[str] = None
    """MLflow experiment; default `finetune-<name>`."""
    run_name: Optional[str] = None
    """MLflow run name; default `<name>`."""


with warnings.catch_warnings():
    # `register` is the user-facing key; pydantic warns that it shadows ABCMeta.register, which no one calls here.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class FinetuneConfig(ConfigModel):
        """A LoRA fine-tune: `llmops finetune FILE [key.sub=value ...]`."""

        name: Optional[str] = None
        """Job name: default registered model name, run folder and experiment; default: the config file's name."""
        model: ModelSection
        adapter: AdapterSection = AdapterSection()
        data: DataSection
        training: TrainingSection = TrainingSection()
        distributed: DistributedSection = DistributedSection()
        checkpoint: CheckpointSection = CheckpointSection()
        register: RegisterSection = RegisterSection()
        tracking: TrackingSection = TrackingSection()

        @model_validator(mode="after")
        def _default_name(self, info: ValidationInfo):
            if self.name is None:
                source = (info.context or {}).get("source")
                stem = Path(source).stem if source and not str(source).startswith("<") else "finetune"
                self.name = re.sub(r"[^A-Za-z0-9._-]", "-", stem) or "finetune"
            return self

        @property
        def model_name(self) -> str:
            """The registered model name the adapter goes to."""
            return self.register.name or str(self.name)

        def resolved(self) -> dict[str, Any]:
            """The resolved config as plain data (paths as strings), as logged and saved."""
            return self.model_dump(mode="json")


def load_finetune_config(path: str | Path, overrides: Iterable[str] = ()) -> FinetuneConfig:
    """Load and validate a fine-tune config file with `key.sub=value` overrides.

    Raises:
        ConfigError: every problem found, each with file, line and key.
    """
    return load_config(path, FinetuneConfig, list(overrides))
