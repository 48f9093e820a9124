"""llmops: LoRA fine-tunes, versioned prompts, an OpenAI-compatible gateway, gated evaluation
and drift kernels, joined through one model registry.

`import llmops` stays light: torch, mlflow, transformers and the GPU libraries are imported by the
leaf modules that use them.
"""

from llmops.errors import LlmopsError

__version__ = "0.1.0"

__all__ = ["LlmopsError", "__version__"]
