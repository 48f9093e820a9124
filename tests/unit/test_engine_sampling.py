"""Sampling in the in-process engine: vLLM's checks, edge values that must stay finite, and one failing
row that must not touch the others (`llmops/gateway/engines/sampling.py` and `sampler.py`)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from llmops.gateway.engines.base import SamplingParams  # noqa: E402
from llmops.gateway.engines.sampler import pick_tokens  # noqa: E402
from llmops.gateway.engines.sampling import GenerationRequestError, RowSampling, check_sampling  # noqa: E402
from llmops.gateway.errors import from_exception  # noqa: E402

VOCAB = 50


def _row(seen=(3,), seed=None, **params):
    sampling = check_sampling(SamplingParams(max_tokens=4, **params), VOCAB)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return sampling, torch.tensor(list(seen), dtype=torch.long), generator


@pytest.mark.parametrize("field, value, words", [
    ("temperature", -0.1, "[0, 2]"),
    ("temperature", 2.5, "[0, 2]"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("temperature", "hot", "number"),
    ("temperature", 10**400, "too large"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_k", -2, "at least 1"),
    ("top_k", 2.5, "integer"),
    ("min_p", 1.5, "[0, 1]"),
    ("min_p", -0.1, "[0, 1]"),
    ("repetition_penalty", 0.0, "greater than 0"),
    ("repetition_penalty", -1.0, "greater than 0"),
    ("repetition_penalty", math.inf, "finite"),
    ("max_tokens", 0, "at least 1"),
    ("max_tokens", True, "integer"),
    ("seed", 2**64, "seed"),
    ("seed", -(2**63) - 1, "seed"),
    ("logprobs", -2, "-1"),
])
def test_values_vllm_rejects_are_a_400_naming_the_field(field, value, words):
    params = {"max_tokens": 4, field: value}
    with pytest.raises(GenerationRequestError) as error:
        check_sampling(SamplingParams(**params), VOCAB)
    assert words in str(error.value) and error.value.param == field
    assert isinstance(error.value, ValueError)
    answered = from_exception(error.value)  # what the gateway turns it into
    assert answered.status == 400 and answered.param == field


def test_tiny_temperatures_are_greedy_and_small_ones_are_raised_to_vllms_floor():
    assert check_sampling(SamplingParams(max_tokens=1, temperature=1e-300), VOCAB).greedy
    assert check_sampling(SamplingParams(max_tokens=1, temperature=0.0, top_p=0.1, top_k=3), VOCAB) == RowSampling()
    small = check_sampling(SamplingParams(max_tokens=1, temperature=1e-4), VOCAB)
    assert not small.greedy and small.temperature == 1e-2
    assert check_sampling(SamplingParams(max_tokens=1, temperature=0.7), VOCAB).temperature == 0.7


def test_vllm_spellings_of_off():
    sampling = check_sampling(SamplingParams(max_tokens=1, temperature=1.0, top_k=-1, seed=-1, logprobs=-1), VOCAB)
    assert sampling.top_k == 0 and sampling.seed is None and sampling.logprobs == VOCAB
    assert check_sampling(SamplingParams(max_tokens=1, temperature=1.0, top_k=10**9), VOCAB).top_k == 0


@pytest.mark.parametrize("params", [
    {"temperature": 1e-300},
    {"temperature": 1e-5},
    {"repetition_penalty": 1e-300},
    {"repetition_penalty": 1e300},
    {"temperature": 1e-300, "repetition_penalty": 1e-300},
    {"temperature": 2.0, "repetition_penalty": 1e-300},
    {"temperature": 1e-4, "repetition_penalty": 1e300},
    {"temperature": 1.0, "top_p": 1e-300},
    {"temperature": 1.0, "top_k": 1},
    {"temperature": 1.0, "top_k": 10**9},
    {"temperature": 1.0, "min_p": 1.0},
    {"temperature": 0.01, "min_p": 1.0, "top_p": 1e-9, "top_k": 2},
    {"temperature": 1.0, "logprobs": 10**6},
])
def test_edge_values_give_a_token_never_a_failure(params):
    # Logits with large magnitudes (as real models make them) and a zero that 0/0 would turn into NaN.
    logits = torch.tensor([[0.0, 30.0, -30.0, 25.0] + [-1.0] * (VOCAB - 4)])
    picked = pick_tokens(logits, [_row(seen=(0, 1, 2), seed=1, **params)])
    assert picked.failures == {}
    assert 0 <= picked.tokens[0] < VOCAB
    if params.get("temperature", 0) < 1e-5 and params.get("repetition_penalty", 1) == 1:
        assert picked.tokens[0] == 1  # greedy
    if picked.logprobs:
        assert all(math.isfinite(v) for _, v in picked.logprobs[0][1])


def test_repetition_penalty_extremes_pick_the_expected_token():
    logits = torch.tensor([[0.0, 30.0, -30.0, 25.0] + [-1.0] * (VOCAB - 4)])
    # Tiny penalty: a seen token with a positive logit wins; huge penalty: the seen favourite loses.
    assert pick_tokens(logits, [_row(seen=(3,), repetition_penalty=1e-300)]).tokens == [3]
    assert pick_tokens(logits, [_row(seen=(1,), repetition_penalty=1e300)]).tokens == [3]
    assert pick_tokens(logits, [_row(seen=(1, 3), repetition_penalty=1e300, temperature=1e-4)]).failures == {}


def test_greedy_sampling_penalty_and_logprobs_per_row():
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0]] * 4)
    rows = [_row(), _row(temperature=1.0, top_k=1, seed=0), _row(repetition_penalty=10.0),
            _row(temperature=1.0, top_p=0.5, seed=1, logprobs=2)]
    rows = [(check_sampling(SamplingParams(max_tokens=1, **p), 4), *rest) for p, (_, *rest) in zip(
        [{}, {"temperature": 1.0, "top_k": 1}, {"repetition_penalty": 10.0},
         {"temperature": 1.0, "top_p": 0.5, "logprobs": 2}], rows)]
    picked = pick_tokens(logits, rows)
    assert picked.tokens == [3, 3, 2, 3]  # greedy; top_k=1; the penalty moves off token 3; top_p keeps 3
    assert picked.logprobs[0] is None and [t for t, _ in picked.logprobs[3][1]] == [3, 2]
    draws = {pick_tokens(torch.zeros(1, VOCAB), [_row(temperature=1.0, seed=5)]).tokens[0] for _ in range(3)}
    assert len(draws) == 1  # the same seed gives the same draw


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_a_row_with_non_finite_logits_fails_alone(poison):
    logits = torch.randn(4, VOCAB)
    logits[2, 7] = poison
    rows = [_row(), _row(temperature=0.8, seed=1), _row(temperature=0.8, seed=2), _row(logprobs=3)]
    picked = pick_tokens(logits, rows)
    assert set(picked.failures) == {2} and "non-finite" in picked.failures[2]
    assert picked.tokens[0] == int(logits[0].argmax()) and picked.tokens[3] == int(logits[3].argmax())
    assert picked.logprobs[3] is not None and picked.logprobs[2] is None


def test_a_row_whose_sampling_raises_fails_alone():
    logits = torch.randn(3, VOCAB)
    # Row 1's penalty indexes a token outside the vocabulary: an IndexError inside its sampling.
    rows = [_row(temperature=1.0, seed=1), _row(seen=(VOCAB + 5,), repetition_penalty=1.2), _row()]
    picked = pick_tokens(logits, rows)
    assert set(picked.failures) == {1} and "sampling failed" in picked.failures[1]
    assert picked.tokens[2] == int(logits[2].argmax())


def test_all_rows_negative_infinity_is_a_failure_not_a_token():
    logits = torch.full((2, VOCAB), -math.inf)
    logits[0, 4] = 1.0
    picked = pick_tokens(logits, [_row(), _row()])
    assert picked.tokens[0] == 4 and set(picked.failures) == {1}


def test_sampled_rows_follow_their_distribution_and_filters():
    # 3000 rows with distinct seeds over logits log([0.5, 0.3, 0.2, 0...]): frequencies near p.
    probs = torch.tensor([0.5, 0.3, 0.2] + [0.0] * (VOCAB - 3))
    logits = probs.clamp(min=1e-30).log().repeat(3000, 1)
    picked = pick_tokens(logits, [_row(temperature=1.0, seed=i) for i in range(3000)])
    counts = torch.bincount(torch.tensor(picked.tokens), minlength=VOCAB).float() / 3000
    assert torch.allclose(counts[:3], probs[:3], atol=0.04) and counts[3:].sum() < 0.01
    # One block, each row under its own filter.
    rows = [_row(temperature=1.0, seed=i, **p) for i in range(200)
            for p in ({"top_k": 1}, {"top_k": 2}, {"top_p": 0.6}, {"min_p": 0.5}, {})]
    tokens = pick_tokens(logits[:1].repeat(len(rows), 1), rows).tokens
    by_filter = [set(tokens[i::5]) for i in range(5)]
    assert by_filter[0] == {0} and by_filter[1] == {0, 1} and by_filter[2] == {0, 1}
    assert by_filter[3] == {0, 1} and by_filter[4] == {0, 1, 2}


def test_a_row_whose_draw_raises_fails_alone_in_a_sampled_block():
    logits = torch.randn(3, VOCAB)
    rows = [_row(temperature=1.0, seed=1), (RowSampling(greedy=False), None, "not a generator"),
            _row(temperature=1.0, seed=2)]
    picked = pick_tokens(logits, rows)
    assert set(picked.failures) == {1} and "sampling failed" in picked.failures[1]
    # The healthy rows drew exactly what they draw without the broken one (same seeds, fresh generators).
    alone = pick_tokens(logits[[0, 2]], [_row(temperature=1.0, seed=1), _row(temperature=1.0, seed=2)])
    assert [picked.tokens[0], picked.tokens[2]] == alone.tokens


def test_the_vllm_engine_gets_the_same_checks_and_safe_values():
    from llmops.gateway.engines.vllm import sampling_kwargs

    kwargs = sampling_kwargs(SamplingParams(max_tokens=4, temperature=1e-300, repetition_penalty=1e-300))
    assert kwargs["temperature"] == 0.0 and kwargs["repetition_penalty"] == 1e-20
    assert sampling_kwargs(SamplingParams(max_tokens=4, temperature=1.0, min_p=0.1, seed=-1))["min_p"] == 0.1
    assert "seed" not in sampling_kwargs(SamplingParams(max_tokens=4, temperature=1.0, seed=-1))
    with pytest.raises(GenerationRequestError, match="temperature"):
        sampling_kwargs(SamplingParams(max_tokens=4, temperature=math.nan))


def test_a_penalty_that_overflows_a_huge_logit_fails_that_row_only():
    logits = torch.zeros(3, VOCAB)
    logits[1, 5] = 1e30  # finite, but divided by the smallest penalty it leaves float32
    rows = [_row(seen=(5,), repetition_penalty=1e-300), _row(seen=(5,), repetition_penalty=1e-300),
            _row(seen=(5,), repetition_penalty=1e-300, temperature=1.0, seed=1)]
    logits[2, 5] = 1e30
    picked = pick_tokens(logits, rows)
    assert set(picked.failures) == {1, 2} and picked.tokens[0] == 0
