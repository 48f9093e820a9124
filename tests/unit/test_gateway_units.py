"""Gateway pieces without a server: stop-sequence assembly, error shapes, wire models, config, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmops.gateway.text import TextAssembler

ROOT = Path(__file__).resolve().parents[2]


def _decoder(pieces):
    return lambda ids: "".join(pieces[i] for i in ids)


@pytest.mark.parametrize("pieces, stop, expected_text, stopped", [
    (["Hel", "lo", " wor", "ld"], [], "Hello world", False),
    (["Hel", "lo", " wor", "ld"], ["wor"], "Hello ", True),
    (["Hel", "lo", " wor", "ld"], ["lo w"], "Hel", True),          # stop spans two tokens
    (["Hel", "lo", " wor", "ld"], ["xyz", "o w"], "Hell", True),    # the earliest of several
    (["Hel", "lo", " wor", "ld"], ["ld!"], "Hello world", False),   # held back, then released at the end
])
def test_text_assembler_never_leaks_a_stop_sequence(pieces, stop, expected_text, stopped):
    assembler = TextAssembler(_decoder(pieces), stop)
    deltas = [assembler.add(i) for i in range(len(pieces))]
    for i, delta in enumerate(deltas):
        for s in stop:
            assert s not in "".join(deltas[: i + 1])
    text = "".join(deltas) + assembler.finish()
    assert text == expected_text and assembler.stopped == stopped


def test_text_assembler_waits_for_a_whole_character():
    data = "é".encode()
    decode = lambda ids: bytes(data[i] for i in ids).decode("utf-8", errors="replace")  # noqa: E731
    assembler = TextAssembler(decode)
    assert assembler.add(0) == "" and assembler.add(1) == "é"


def test_errors_map_to_openai_shape():
    from llmops.errors import ConfigError, NotFoundError, PromptRenderError
    from llmops.gateway.errors import from_exception

    missing = from_exception(PromptRenderError("missing variable(s) country", missing=["country"]))
    assert missing.status == 400 and missing.param == "variables"
    model = from_exception(NotFoundError("no model"), param="model")
    assert (model.status, model.code) == (404, "model_not_found")
    assert from_exception(ConfigError("bad")).status == 400
    bug = from_exception(ZeroDivisionError("x"))
    assert bug.status == 500 and bug.body()["error"]["type"] == "internal_server_error"
    assert set(model.body()["error"]) == {"message", "type", "param", "code"}


def test_wire_models_accept_unknown_fields_and_check_ranges():
    from pydantic import ValidationError

    from llmops.gateway.errors import from_validation_errors
    from llmops.gateway.protocol import ChatCompletionRequest

    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
         "brand_new_field": 1})
    assert request.model_extra == {"brand_new_field": 1} and request.messages[0].text() == "ab"
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [], "temperature": -1})
    mapped = from_validation_errors(error.value.errors())
    assert mapped.status == 400 and mapped.param == "temperature"
    from llmops.gateway.admission import plan_generation
    from llmops.gateway.config import LimitsConfig
    from llmops.gateway.errors import GatewayError

    five_stops = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                       "stop": ["a", "b", "c", "d", "e"]})
    with pytest.raises(GatewayError):  # OpenAI's 4 stop sequences: `limits.max_stop`
        plan_generation(five_stops, LimitsConfig(), "chat.completions")


def test_shipped_gateway_config_and_errors_name_the_key(tmp_path):
    from llmops.config import load_config, validate_file
    from llmops.errors import ConfigError
    from llmops.gateway.config import GatewayConfig

    kind, config = validate_file(ROOT / "serving" / "gateway.yaml")
    assert kind == "gateway" and config.tracing.enabled and config.limits.max_body_bytes >= 1024
    bad = tmp_path / "gateway.yaml"
    bad.write_text("models: ['not a ref']\ntracing: {sample_ratoi: 0.5}\nlimits: {max_tokens: 8, default_max_tokens: 16}\n")
    with pytest.raises(ConfigError) as error:
        load_config(bad, GatewayConfig)
    text = " ".join(error.value.errors)
    assert "models" in text and "did you mean tracing.sample_ratio" in text and "default_max_tokens" in text


def test_prometheus_scrape_config_targets_the_gateway_metrics():
    import yaml

    from llmops.gateway.config import GatewayConfig

    config = yaml.safe_load((ROOT / "serving" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "llmops-gateway")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"{GatewayConfig().host}:{GatewayConfig().port}"]
