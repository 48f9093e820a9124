"""The in-process transformers engine keeps requests apart: a broken row fails alone, the engine makes
its own sequence keys, and a request with many sequences cannot starve a small one.

Real tiny model on the engine's real worker thread; outcomes are asserted as tokens, finish reasons
and orders, never as durations.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from llmops.gateway.engines.base import GenerationRequest, SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_model_path, tmp_path_factory):
    """The tiny model with a batch of 4 and one LoRA adapter whose weights are NaN (`poisoned`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmops.gateway.engines.transformers import TransformersEngine

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("poisoned")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.fill_(float("nan"))  # a corrupted adapter: every logit of its rows is NaN
    peft_model.save_pretrained(folder)
    engine = TransformersEngine(tiny_model_path, device="cpu", max_batch_size=4)
    asyncio.run(engine.load_adapter("poisoned", Path(folder)))
    yield engine
    asyncio.run(engine.close())


def _request(engine, text: str, max_tokens: int = 12, group=None, request_id: str = "r", adapter=None, **params):
    params.setdefault("ignore_eos", True)
    return GenerationRequest(request_id, engine.encode_text(text), SamplingParams(max_tokens=max_tokens, **params),
                             adapter=adapter, group=group)


async def _collect(engine, request, finished: list | None = None, label=None):
    tokens, reason = [], None
    async for event in engine.generate(request):
        if event.finish_reason == "error":
            reason = "error"
            break
        tokens.append(event.token_id)
        reason = event.finish_reason
    if finished is not None:
        finished.append(label)
    return tokens, reason


def test_a_poisoned_row_fails_alone_and_the_batch_goes_on(engine):
    async def main():
        alone = await _collect(engine, _request(engine, "the capital of france"))
        results = await asyncio.gather(
            _collect(engine, _request(engine, "the capital of france")),
            _collect(engine, _request(engine, "poison", adapter="poisoned")),
            _collect(engine, _request(engine, "the capital of france", temperature=0.7, seed=3)),
            _collect(engine, _request(engine, "the capital of france", temperature=1e-300,
                                      repetition_penalty=1e-300)),
        )
        after = await _collect(engine, _request(engine, "the capital of france"))
        return alone, results, after

    alone, (base, poisoned, sampled, hostile), after = asyncio.run(main())
    assert poisoned == ([], "error")
    assert base == alone and after == alone  # same greedy tokens as when it ran alone
    assert sampled[1] == "length" and len(sampled[0]) == 12
    assert hostile[1] == "length" and len(hostile[0]) == 12
    assert engine.stats()["running"] == 0


def test_a_sequence_whose_prefill_raises_fails_alone(engine):
    """A sequence that makes the forward pass itself raise (here a token id beyond the embedding table,
    which `generate` would refuse, queued past its checks) is isolated by prefilling one at a time."""
    from llmops.gateway.engines.batching import Sequence

    async def main():
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        broken = Sequence(GenerationRequest("x", [engine.vocab_size + 10], SamplingParams(max_tokens=4)),
                          emit=engine._deliveries.sink(loop, events), key=-1)
        good = [_collect(engine, _request(engine, f"prompt {i}")) for i in range(3)]
        engine._commands.put(("add", broken))  # joins the same admission as the three good ones
        results = await asyncio.gather(*good)
        return await events.get(), results

    failure, results = asyncio.run(main())
    assert failure.finish_reason == "error" and "prefill failed" in failure.extra["error"]
    assert all(reason == "length" and len(tokens) == 12 for tokens, reason in results)


def test_invalid_sampling_is_refused_before_anything_is_queued(engine):
    from llmops.gateway.engines.sampling import GenerationRequestError

    async def main():
        with pytest.raises(GenerationRequestError, match="temperature"):
            await _collect(engine, _request(engine, "x", temperature=float("nan")))
        with pytest.raises(GenerationRequestError, match="prompt"):
            await _collect(engine, GenerationRequest("r", [engine.vocab_size], SamplingParams(max_tokens=2)))

    asyncio.run(main())
    assert engine.stats()["waiting"] == 0


def test_the_same_request_id_twice_cannot_mix_outputs(engine):
    async def main():
        solo_a = await _collect(engine, _request(engine, "alpha beta gamma", request_id="same"))
        solo_b = await _collect(engine, _request(engine, "one two three four five", request_id="same"))
        both = await asyncio.gather(
            _collect(engine, _request(engine, "alpha beta gamma", request_id="same")),
            _collect(engine, _request(engine, "one two three four five", request_id="same")),
        )
        return solo_a, solo_b, both

    solo_a, solo_b, (a, b) = asyncio.run(main())
    assert solo_a != solo_b
    assert a == solo_a and b == solo_b


def test_a_request_with_many_sequences_does_not_starve_a_small_one(engine):
    """Batch of 4, a request of 24 sequences x 48 tokens fills it; a small request sent once the big
    one runs finishes before any big sequence does (it gets a slot by preemption, at once), and the
    preempted sequences, recomputed later, still produce exactly their greedy tokens."""
    order: list = []

    async def main():
        reference = await _collect(engine, _request(engine, "many many many", max_tokens=48))
        big_group = object()
        big = [asyncio.ensure_future(_collect(engine, _request(engine, "many many many", max_tokens=48,
                                                                 group=big_group), order, "big"))
               for _ in range(24)]
        while engine.stats()["running"] < 4:
            await asyncio.sleep(0.005)
        small = await _collect(engine, _request(engine, "a short chat", max_tokens=8, group=object()), order, "small")
        return reference, await asyncio.gather(*big), small

    reference, big, small = asyncio.run(main())
    assert small[1] == "length" and len(small[0]) == 8
    assert order[0] == "small"
    assert all(result == reference for result in big)


def test_a_decoding_step_that_raises_is_recomputed_not_lost(engine):
    """A forward pass that raises during decoding (say a transient CUDA error) cannot be blamed on one
    row and may leave the KV cache half written: the running sequences are prefilled again from what
    they generated and finish with exactly the tokens they would have had."""
    calls = {"decode": 0}

    def fail_once(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] == 1:
            calls["decode"] += 1
            if calls["decode"] == 3:
                raise RuntimeError("injected decoding failure")

    async def main():
        reference = [await _collect(engine, _request(engine, f"story {i}", max_tokens=10)) for i in range(3)]
        calls["decode"] = 0
        handle = engine.base_model.register_forward_pre_hook(fail_once, with_kwargs=True)
        try:
            results = await asyncio.gather(*(_collect(engine, _request(engine, f"story {i}", max_tokens=10))
                                             for i in range(3)))
        finally:
            handle.remove()
        return reference, results

    reference, results = asyncio.run(main())
    assert calls["decode"] > 3  # it did fail once, and decoding went on afterwards
    assert results == reference
