"""Issue 11 acceptance, end to end: one client's hostile sampling values or reused `x-request-id` cannot
hurt another client. A real gateway on 127.0.0.1 with the tiny model, driven by the `openai` client."""

from __future__ import annotations

import threading

import pytest

openai = pytest.importorskip("openai")

HOSTILE = [
    {"temperature": 1e-300},
    {"extra_body": {"repetition_penalty": 1e-300}},
    {"temperature": 1e-300, "extra_body": {"repetition_penalty": 1e-300}},
    {"temperature": 2.0, "extra_body": {"repetition_penalty": 1e300}},
    {"temperature": 1.0, "top_p": 1e-300},
]


def make_poisoned_adapter(base_path, out):
    """A LoRA adapter whose weights are NaN, as a corrupted upload would be: every logit of its rows is NaN."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.fill_(float("nan"))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def gateway(tiny_store, tiny_model_path, tmp_path_factory):
    import torch

    from llmops import registry
    from llmops.gateway import GatewayConfig, create_app
    from llmops.gateway.server import BackgroundServer

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("gateway-isolation")
    with tiny_store(folder):
        poisoned = make_poisoned_adapter(tiny_model_path, folder / "poisoned")
        registry.register_adapter("poisoned", poisoned, base="tiny/1", alias="production")
        config = GatewayConfig(models=None, tracing={"enabled": False},
                               limits={"max_tokens": 400, "default_max_tokens": 16})
        server = BackgroundServer(create_app(config)).start()
        yield server.url
        server.stop()


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_long_generation_finishes_while_another_client_sends_hostile_sampling(client):
    started = threading.Event()
    outcome: dict = {}

    def long_generation():
        try:
            stream = client.chat.completions.create(
                model="tiny@production", messages=[{"role": "user", "content": "Tell me a long story."}],
                max_tokens=300, temperature=0.8, seed=7, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            for chunk in stream:
                started.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    outcome["finish_reason"] = chunk.choices[0].finish_reason
                if chunk.usage:
                    outcome["completion_tokens"] = chunk.usage.completion_tokens
        except Exception as error:  # recorded for the assertion below
            outcome["error"] = repr(error)
        finally:
            started.set()

    thread = threading.Thread(target=long_generation)
    thread.start()
    assert started.wait(120)
    answers = []
    for extra in HOSTILE:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny@production", messages=[{"role": "user", "content": "hi"}], max_tokens=24, **extra)
        answers.append((raw.http_response.status_code, raw.parse().choices[0].finish_reason))
    thread.join(300)
    assert outcome == {"finish_reason": "length", "completion_tokens": 300}
    # The hostile requests were served too: tiny temperatures are greedy, penalties clamped (as vLLM).
    assert all(status == 200 and reason in ("stop", "length") for status, reason in answers)


def test_a_reused_request_id_cannot_reach_another_requests_output(client):
    def ask(text: str) -> str:
        return client.chat.completions.create(
            model="tiny@production", messages=[{"role": "user", "content": text}], max_tokens=20, temperature=0,
            extra_body={"ignore_eos": True}, extra_headers={"x-request-id": "same-id"}).choices[0].message.content

    prompts = ["What is the capital of France?", "Count from one to ten, please."]
    alone = [ask(text) for text in prompts]
    together: list = [None, None]

    def run(index: int) -> None:
        together[index] = ask(prompts[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert alone[0] != alone[1]
    assert together == alone


@pytest.mark.parametrize("extra", [{"seed": 2**64}, {"seed": -(2**63) - 1}])
def test_a_value_the_engine_refuses_is_a_400_in_openais_shape(client, extra):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny@production", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, temperature=1.0, **extra)
    assert error.value.body["param"] == "seed" and "seed" in error.value.body["message"]
    reply = client.chat.completions.create(model="tiny@production", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_broken_adapter_fails_only_its_own_requests(client):
    """Rows on an adapter with NaN weights decode in the same batch as the base model's rows: their
    requests fail (a 5xx), the base model's generation in flight finishes untouched."""
    started = threading.Event()
    outcome: dict = {}

    def base_generation():
        try:
            stream = client.completions.create(model="tiny@production", prompt="Once upon a time", max_tokens=120,
                                               stream=True, extra_body={"ignore_eos": True},
                                               stream_options={"include_usage": True})
            for chunk in stream:
                started.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    outcome["finish_reason"] = chunk.choices[0].finish_reason
                if chunk.usage:
                    outcome["completion_tokens"] = chunk.usage.completion_tokens
        except Exception as error:  # recorded for the assertion below
            outcome["error"] = repr(error)
        finally:
            started.set()

    thread = threading.Thread(target=base_generation)
    thread.start()
    assert started.wait(120)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="poisoned@production", prompt="hello", max_tokens=8)
    thread.join(300)
    assert outcome == {"finish_reason": "length", "completion_tokens": 120}
