"""The pipeline's pure parts: strict JSON, vLLM-style value checks, limits and reservations, scope, errors."""

from __future__ import annotations

import pytest

from llmops.gateway.admission import plan_embeddings, plan_generation
from llmops.gateway.asgi import parse_json
from llmops.gateway.config import LimitsConfig
from llmops.gateway.errors import GatewayError, from_exception, from_validation_errors
from llmops.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

LIMITS = LimitsConfig(max_n=4, max_tokens=64, default_max_tokens=8, max_prompts=4, max_sequences=8, max_stop=2,
                      max_stop_length=8, max_embedding_inputs=3, max_embedding_tokens=20)


@pytest.mark.parametrize("raw, fragment", [
    (b"[" * 5000, "not valid JSON"),
    (b'{"a": "\\ud800"}', "not valid JSON"),
    (b'{"a": "\xff"}', "not valid JSON"),
    (b'{"a": 1e400}', "not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}", "deeper than 64"),
])
def test_bad_json_is_a_400(raw, fragment):
    with pytest.raises(GatewayError) as caught:
        parse_json(raw, 64)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_json_within_the_depth_limit_and_with_many_brackets_passes():
    assert parse_json(b'{"prompt": [[1, 2], [3], [4], [5]]}', 3) == {"prompt": [[1, 2], [3], [4], [5]]}


def _invalid(model_cls, body: dict) -> GatewayError:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        model_cls.model_validate(body)
    return from_validation_errors(caught.value.errors(include_url=False, include_input=False))


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.5), ("temperature", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("repetition_penalty", 0.0),
    ("top_k", -2), ("min_p", 1.5), ("seed", 2**63), ("seed", -(2**63) - 1), ("n", 0), ("max_tokens", 0),
    ("stream", "true"), ("n", "2"), ("temperature", True), ("stop", [""]), ("logprobs", 1),
])
def test_sampling_values_are_refused_like_vllm_does(field, value):
    error = _invalid(ChatCompletionRequest, {"model": "m", "messages": [], field: value})
    assert error.status == 400 and error.param == field


def test_tiny_but_valid_values_pass_and_min_tokens_needs_room():
    request = ChatCompletionRequest.model_validate({"model": "m", "temperature": 1e-300, "repetition_penalty": 1e-300,
                                                    "seed": 2**63 - 1, "top_k": 0})
    assert request.temperature == 1e-300
    error = _invalid(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": 2, "min_tokens": 3})
    assert "min_tokens" in error.message


def test_union_errors_name_the_field_only():
    error = _invalid(CompletionRequest, {"model": "m", "prompt": {"a": 1}})
    assert error.param == "prompt"


@pytest.mark.parametrize("endpoint, body, param", [
    ("chat.completions", {"messages": [{"role": "user", "content": "x"}], "n": 5}, "n"),
    ("chat.completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 65}, "max_tokens"),
    ("chat.completions", {"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c"]}, "stop"),
    ("chat.completions", {"messages": [{"role": "user", "content": "x"}], "stop": "123456789"}, "stop"),
    ("chat.completions", {"messages": []}, "messages"),
    ("completions", {"prompt": ["a"] * 5}, "prompt"),
    ("completions", {"prompt": ["a"] * 3, "n": 3}, "n"),
    ("completions", {"prompt": "a", "n": 2, "best_of": 5}, "best_of"),
    ("completions", {"prompt": []}, "prompt"),
])
def test_limits_name_the_field(endpoint, body, param):
    model_cls = ChatCompletionRequest if endpoint == "chat.completions" else CompletionRequest
    with pytest.raises(GatewayError) as caught:
        plan_generation(model_cls.model_validate({"model": "m", **body}), LIMITS, endpoint)
    assert caught.value.status == 400 and caught.value.param == param


def test_reservation_is_sequences_times_max_tokens_plus_prompt():
    request = CompletionRequest.model_validate({"model": "m", "prompt": [[1, 2, 3], [4, 5]], "n": 2, "max_tokens": 10})
    plan = plan_generation(request, LIMITS, "completions")
    assert (plan.sequences, plan.max_tokens, plan.reserve) == (4, 10, 4 * 10 + 5)
    default = plan_generation(ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "12345678"}]}), LIMITS, "chat.completions")
    assert default.max_tokens == 8 and default.reserve == 8 + 3
    from_prompt = plan_generation(ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "x"}]}), LIMITS, "chat.completions", default_max_tokens=32)
    assert from_prompt.max_tokens == 32


@pytest.mark.parametrize("data, ok", [
    (["a", "b", "c"], True), (["a"] * 4, False), ([[1] * 21], False), ("x" * 60, True), ("x" * 100, False),
    ([], False), ([""], False),
])
def test_embedding_limits(data, ok):
    request = EmbeddingRequest.model_validate({"model": "m", "input": data})
    if ok:
        assert plan_embeddings(request, LIMITS).sequences >= 1
    else:
        with pytest.raises(GatewayError) as caught:
            plan_embeddings(request, LIMITS)
        assert caught.value.param == "input"


def test_internal_errors_say_nothing_but_the_request_id():
    error = from_exception(RuntimeError("secret /path/and detail"))
    assert error.status == 500 and "secret" not in error.message and error.message.startswith("internal error")
    from llmops.gateway.errors import internal_error

    assert "abc123" in internal_error("abc123").message


def test_prompt_scope_patterns():
    from llmops.gateway.auth import AuthConfig, KeyChecker, hash_key

    keys = KeyChecker(AuthConfig(enabled=True, keys=[
        {"id": "a", "sha256": hash_key("k1"), "prompts": ["qa*"]},
        {"id": "b", "sha256": hash_key("k2"), "prompts": []},
        {"id": "c", "sha256": hash_key("k3")},
    ]))
    a, b, c = (keys.authenticate(f"Bearer k{i}") for i in (1, 2, 3))
    keys.check_prompt_scope(a, "qa@production")
    keys.check_prompt_scope(c, "anything@production")
    for key, ref in ((a, "secret@production"), (b, "qa@production")):
        with pytest.raises(GatewayError) as caught:
            keys.check_prompt_scope(key, ref)
        assert caught.value.status == 403 and caught.value.code == "prompt_not_allowed"
    assert keys.allows_model(None, "x") and keys.allows_model(c, "x")
