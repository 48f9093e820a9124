"""LoRA fine-tuning from one YAML config: schema, data (load, format, mask, pack), the training job,
checkpoints with exact resume, MLflow tracking and registration of the adapter in the model registry.

Heavy packages (torch, transformers, peft, accelerate, mlflow) are imported inside the functions that
use them, so importing this package is cheap.
"""

from llmops.errors import LlmopsError

__all__ = ["FinetuneError"]


class FinetuneError(LlmopsError):
    """A fine-tune cannot run as configured: bad data, unknown base model, incompatible checkpoint.

    The message names the file, line or config key at fault and what to do.
    """
