"""The `vllm` engine on a GPU with vLLM installed: greedy tokens match transformers, a LoRA adapter
changes them, closing the stream aborts. Skipped where vLLM or a CUDA device is missing."""

from __future__ import annotations

import asyncio

import pytest

from llmops.extras import has_cuda, has_vllm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not (has_vllm() and has_cuda()), reason="needs vLLM and a GPU")]


def _adapter(base, out):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_vllm_engine_generates_loads_adapters_and_aborts(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmops.gateway.engines.base import GenerationRequest, SamplingParams
    from llmops.gateway.engines.vllm import VllmEngine

    engine = VllmEngine(str(tiny_model_path), dtype="float32", gpu_memory_utilization=0.3, max_lora_rank=8,
                        engine_kwargs={"enforce_eager": True})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = engine.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    params = SamplingParams(max_tokens=8, temperature=0.0)

    async def run(adapter=None, stop_after=None, request_id="r"):
        tokens = []
        stream = engine.generate(GenerationRequest(request_id, prompt, params, adapter))
        try:
            async for event in stream:
                tokens.append(event)
                if stop_after is not None and len(tokens) >= stop_after:
                    break
        finally:
            await stream.aclose()
        return tokens

    async def scenario():
        base = await run(request_id="base")
        await engine.load_adapter("capitals/1", _adapter(tiny_model_path, tmp_path / "adapter"))
        adapted = await run("capitals/1", request_id="lora")
        cut = await run(stop_after=2, request_id="cut")
        return base, adapted, cut

    base, adapted, cut = asyncio.run(scenario())
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    import torch

    expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    ids = [e.token_id for e in base]
    assert ids == expected[:len(ids)] and base[-1].finish_reason in {"stop", "length"}
    assert [e.token_id for e in adapted] != ids
    assert len(cut) == 2 and engine.stats()["aborted"] == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == engine.decode(ids)
    asyncio.run(engine.close())
