"""The vLLM engine's pure parts, without vLLM: adapter bookkeeping on failed loads, ranks vLLM accepts,
tokenizer pinned to the weights' revision."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from typer.testing import CliRunner

from llmops.cli import app
from llmops.gateway.engines.vllm import VLLM_MAX_LORA_RANKS, LoraBook, check_max_lora_rank, engine_args


class _EngineCore:
    """`AsyncLLM.add_lora`'s contract (vllm/v1/engine/async_llm.py): True when added, False when the core
    did not add it, an exception when loading fails (bad path, rank above max_lora_rank)."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.calls = []

    async def add_lora(self, slot):
        self.calls.append(slot)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize("outcome, reason", [
    (ValueError("LoRA rank 128 is greater than max_lora_rank 64"), "ValueError: LoRA rank 128 is greater"),
    (False, "vLLM did not add it"),
])
def test_a_failed_load_leaves_the_adapter_unregistered_and_a_retry_loads_it(outcome, reason):
    book = LoraBook()
    core = _EngineCore(outcome)
    with pytest.raises(RuntimeError, match=reason):
        asyncio.run(book.load("capitals/3", "/adapters/3", core.add_lora))
    assert "capitals/3" not in book and len(book) == 0
    core.outcome = True  # fixed on disk: the next request loads it, it is not "already loaded"
    slot = asyncio.run(book.load("capitals/3", "/adapters/3", core.add_lora))
    assert "capitals/3" in book and book.get("capitals/3") == slot and len(core.calls) == 2
    asyncio.run(book.load("capitals/3", "/adapters/3", core.add_lora))
    assert len(core.calls) == 2  # loaded once


def test_a_failed_load_frees_its_id_for_the_next_adapter():
    book = LoraBook()
    with pytest.raises(RuntimeError):
        asyncio.run(book.load("a/1", "/x", _EngineCore(OSError("no adapter_config.json")).add_lora))
    assert asyncio.run(book.load("a/1", "/x", _EngineCore(True).add_lora)).int_id == book.add("a/1", "/x").int_id


@pytest.mark.parametrize("rank", VLLM_MAX_LORA_RANKS)
def test_ranks_vllm_accepts_pass(rank):
    assert check_max_lora_rank(rank) == rank


@pytest.mark.parametrize("rank, hint", [(48, "serves rank-48 adapters is 64"), (2, "serves rank-2 adapters is 8"), (1024, "512")])
def test_other_ranks_are_refused_with_the_allowed_set(rank, hint):
    with pytest.raises(ValueError, match=f"max_lora_rank {rank} is not one vLLM accepts: choose one of 1, 8, 16"):
        check_max_lora_rank(rank)
    if rank < 512:
        with pytest.raises(ValueError, match=hint):
            check_max_lora_rank(rank)


def test_validate_reports_a_rank_vllm_would_reject(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent("""\
        kind: gateway
        engine:
          kind: vllm
          vllm:
            max_lora_rank: 48
        """))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:5: engine.vllm.max_lora_rank" in result.stderr and "choose one of 1, 8, 16, 32, 64" in result.stderr


def test_tokenizer_is_pinned_to_the_weights_revision():
    args = engine_args("org/model", "0123abc", {"enable_lora": True})
    assert args["tokenizer"] == args["model"] == "org/model"
    assert args["tokenizer_revision"] == args["revision"] == "0123abc"
    assert args["enable_lora"] is True
