"""Starting a fine-tune: in this process, or as N data-parallel processes through torchrun or
`accelerate launch` (when `distributed.accelerate_config` picks DDP, FSDP or DeepSpeed).

Every process runs `python -m llmops.finetune CONFIG [OVERRIDES]`; rank 0 logs and registers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from llmops.finetune import FinetuneError
from llmops.finetune.schema import FinetuneConfig

__all__ = ["launch_command", "launch", "inside_launch"]


def inside_launch() -> bool:
    """True in a process started by torchrun / accelerate launch (it must train, not launch again)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(config: FinetuneConfig, config_path: Path, overrides: Sequence[str], num_processes: Optional[int]) -> Optional[list[str]]:
    """The launcher command line, or None when the job runs in this process (one process, no accelerate config)."""
    processes = num_processes or config.distributed.num_processes
    accelerate_config = config.distributed.accelerate_config
    job = ["-m", "llmops.finetune", str(config_path), *overrides]
    if accelerate_config is not None:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
        if processes:
            command += ["--num_processes", str(processes)]
        return [*command, "--main_process_port", str(_free_port()), *job]
    if not processes or processes == 1:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *job]


def launch(command: list[str], processes: int) -> None:
    """Run the launcher and wait; the processes print to this process's stdout and stderr.

    Raises:
        FinetuneError: the launcher or a process failed.
    """
    env = dict(os.environ)
    # Share the cores between the processes instead of each one taking all of them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, processes))))
    env.setdefault("PYTHONUNBUFFERED", "1")
    try:
        code = subprocess.call(command, env=env)
    except OSError as error:
        raise FinetuneError(f"cannot start the launcher {command[0]}: {error}") from None
    if code != 0:
        raise FinetuneError(f"the data-parallel fine-tune failed (exit code {code}); the processes' messages are above")
