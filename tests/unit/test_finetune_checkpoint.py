"""Checkpoints load with `weights_only=True` and restore exactly; a checkpoint that carries code is refused."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llmops.finetune import FinetuneError  # noqa: E402
from llmops.finetune.checkpoint import (  # noqa: E402
    TrainState,
    latest_checkpoint,
    load_adapter_state,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _training_objects(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(6, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _save(accelerator, folder: Path, model, optimizer, scheduler, step: int) -> Path:
    state = TrainState(step=step, total_steps=10, global_batch=4, world_size=1, compat_digest="abc")
    return save_checkpoint(accelerator, folder, state, {k: v.detach().clone() for k, v in model.state_dict().items()}, optimizer, scheduler)


def test_every_file_loads_weights_only_and_resume_restores_optimizer_scheduler_and_rng(accelerator, tmp_path):
    model, optimizer, scheduler = _training_objects(0)
    _train(model, optimizer, scheduler, 3)
    random.seed(5), np.random.seed(6), torch.manual_seed(7)
    folder = _save(accelerator, tmp_path, model, optimizer, scheduler, 3)
    assert latest_checkpoint(tmp_path) == folder
    for file in folder.glob("*.pt"):
        torch.load(file, weights_only=True)  # the format itself is weights-only
    expected = (random.random(), np.random.random(), torch.rand(1).item())

    other, other_optimizer, other_scheduler = _training_objects(1)
    other.load_state_dict(load_adapter_state(folder))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    load_checkpoint(accelerator, folder, other_optimizer, other_scheduler)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == expected
    assert other_scheduler.last_epoch == 3 and other_scheduler.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(optimizer.state_dict()["state"].values(), other_optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    # the same next step from both: exact resume
    torch.manual_seed(9)
    _train(model, optimizer, scheduler, 1)
    torch.manual_seed(9)
    _train(other, other_optimizer, other_scheduler, 1)
    assert torch.equal(model.weight, other.weight)


class _Planted:
    """Unpickling this calls Path.touch: a stand-in for any code hidden in a shared checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("victim", ["scheduler.pt", "rank0.pt", "adapter.pt"])
def test_a_checkpoint_with_a_pickled_callable_is_refused_and_never_runs(accelerator, tmp_path, victim):
    model, optimizer, scheduler = _training_objects(0)
    folder = _save(accelerator, tmp_path / "run", model, optimizer, scheduler, 1)
    marker = tmp_path / "code-ran"
    torch.save({"payload": _Planted(marker), "lr_lambda": print}, folder / victim)

    _, fresh_optimizer, fresh_scheduler = _training_objects(0)
    with pytest.raises(FinetuneError) as refused:
        load_adapter_state(folder)
        load_checkpoint(accelerator, folder, fresh_optimizer, fresh_scheduler)
    message = str(refused.value)
    assert message.startswith("checkpoint.resume: refusing ") and str(folder / victim) in message
    assert "would run code" in message and "checkpoint.resume=never" in message
    assert not marker.exists()
    assert fresh_scheduler.last_epoch == 0  # nothing was half-restored


def test_a_truncated_checkpoint_file_is_a_clear_error(accelerator, tmp_path):
    model, optimizer, scheduler = _training_objects(0)
    folder = _save(accelerator, tmp_path, model, optimizer, scheduler, 1)
    (folder / "adapter.pt").write_bytes((folder / "adapter.pt").read_bytes()[:50])
    with pytest.raises(FinetuneError, match=r"checkpoint.resume: cannot read .*adapter.pt"):
        load_adapter_state(folder)
