"""Checkpoints for exact resume: adapter weights, optimizer, scheduler, RNG states and data position.

Layout of `<run dir>/checkpoints/step-000040/`:

- `state.json`   step, data position, config digest, global batch, MLflow run id, counters (rank 0)
- `adapter.pt`   the trainable (LoRA) weights (rank 0)
- `scheduler.pt` the learning-rate scheduler (rank 0)
- `rank{R}.pt`   optimizer state and RNG states of process R (sharded optimizers stay per rank)

Every `.pt` file holds tensors and plain data only (NumPy's RNG state is stored as a tensor), so
resume loads it with `torch.load(weights_only=True)`: a checkpoint folder shared between machines
cannot run code on the machine that resumes from it. A file that needs anything else (a pickled
callable, an arbitrary class) is refused with an error that names it.

A checkpoint is written into a hidden temporary folder and renamed when every process has
written its part, so a process killed mid-save (SIGKILL, preemption) never leaves a checkpoint that
`resume: auto` would pick up half-written.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from llmops.finetune import FinetuneError

__all__ = ["TrainState", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "load_safely", "prune_checkpoints"]

_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """What a checkpoint records besides tensors."""

    step: int
    """Optimizer steps done; also the data position (see `batching.DataPlan`)."""
    total_steps: int
    global_batch: int
    world_size: int
    compat_digest: str
    """Digest of the config keys that must not change across a resume."""
    run_id: Optional[str] = None
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    last_loss: Optional[float] = None


def _rng_state() -> dict[str, Any]:
    """RNG states as plain data and tensors (loadable with ``weights_only=True``)."""
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"algorithm": str(algorithm), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["algorithm"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_safely(path: Path) -> Any:
    """`torch.load(path, weights_only=True)`, with a refusal that names the file and says what to do.

    Raises:
        FinetuneError: the file is missing, unreadable, or needs code to load (a pickled callable or class).
    """
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise FinetuneError(
            f"checkpoint.resume: refusing {path}: it holds Python objects that would run code when loaded ({detail}); "
            "llmops checkpoints hold only tensors and plain data. Delete the folder or set checkpoint.resume=never"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise FinetuneError(f"checkpoint.resume: cannot read {path} ({error}); delete the folder or set checkpoint.resume=never") from None


def save_checkpoint(
    accelerator: Any, folder: Path, state: TrainState, adapter_state: dict, optimizer: Any, scheduler: Any
) -> Path:
    """Write a checkpoint of every process into `folder/step-NNNNNN` (collective: call on every rank).

    `adapter_state` is the trainable state dict (only rank 0's is written).
    """
    import torch

    final = folder / f"step-{state.step:06d}"
    staging = folder / f".step-{state.step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save({"optimizer": optimizer.state_dict(), "rng": _rng_state()}, staging / f"rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(adapter_state, staging / "adapter.pt")
        torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint in `folder`, or None."""
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / "state.json").is_file()]
    return max(found)[1] if found else None


def read_state(checkpoint: Path) -> TrainState:
    """The `TrainState` of a checkpoint folder.

    Raises:
        FinetuneError: the folder is not a checkpoint.
    """
    try:
        return TrainState(**json.loads((checkpoint / "state.json").read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise FinetuneError(f"checkpoint.resume: {checkpoint} is not a llmops checkpoint ({error})") from None


def load_checkpoint(accelerator: Any, checkpoint: Path, optimizer: Any, scheduler: Any) -> None:
    """Restore optimizer, scheduler and RNG states of this process (the adapter is loaded before `prepare`)."""

    own = checkpoint / f"rank{accelerator.process_index}.pt"
    payload = load_safely(own if own.exists() else checkpoint / "rank0.pt")
    scheduler_state = load_safely(checkpoint / "scheduler.pt")
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(scheduler_state)
    _set_rng_state(payload["rng"])


def load_adapter_state(checkpoint: Path) -> dict:
    """The trainable weights saved in a checkpoint (weights-only load, see `load_safely`)."""
    return load_safely(checkpoint / "adapter.pt")


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and leftovers of interrupted saves)."""
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))
    for _, path in found[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for leftover in folder.glob(".step-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
