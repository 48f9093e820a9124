"""Production gateway parts without servers: keys, the vLLM engine's
pure parts (SamplingParams mapping, LoRA ids), upstream config and the `llmops keys` CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from llmops.gateway.auth import ApiKeyConfig, AuthConfig, KeyChecker, hash_key
from llmops.gateway.engines.base import SamplingParams
from llmops.gateway.errors import GatewayError

# ---------------------------------------------------------------------------------------- auth


def _checker(**key) -> KeyChecker:
    entry = {"id": "team-a", "sha256": hash_key("sk-secret"), **key}
    return KeyChecker(AuthConfig(enabled=True, keys=[entry]))


def test_hash_key_is_sha256_hex():
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("header, code", [
    (None, "missing_api_key"),
    ("", "missing_api_key"),
    ("Basic sk-secret", "invalid_api_key"),
    ("Bearer ", "invalid_api_key"),
    ("Bearer sk-wrong", "invalid_api_key"),
])
def test_missing_or_wrong_key_is_401(header, code):
    with pytest.raises(GatewayError) as caught:
        _checker().authenticate(header)
    assert caught.value.status == 401 and caught.value.code == code
    assert caught.value.body()["error"]["type"] == "authentication_error"


def test_valid_key_and_scope_patterns():
    checker = _checker(models=["capitals@*", "tiny/*"])
    key = checker.authenticate("Bearer sk-secret")
    assert key.id == "team-a"
    checker.check_scope(key, "capitals@production")
    checker.check_scope(key, "tiny/1")
    for model in ("tiny@production", "other", "capitals"):
        with pytest.raises(GatewayError) as caught:
            checker.check_scope(key, model)
        assert caught.value.status == 403 and caught.value.param == "model"


def test_disabled_auth_lets_everyone_in():
    checker = KeyChecker(AuthConfig())
    assert checker.authenticate(None) is None
    checker.check_scope(None, "anything")


def test_config_refuses_plain_keys_and_duplicates():
    with pytest.raises(ValueError, match="sha256"):
        ApiKeyConfig(id="a", sha256="sk-plain-key")
    digest = hash_key("x")
    with pytest.raises(ValueError, match="once"):
        AuthConfig(enabled=True, keys=[{"id": "a", "sha256": digest}, {"id": "a", "sha256": hash_key("y")}])
    with pytest.raises(ValueError, match="no key"):
        AuthConfig(enabled=True)
    assert ApiKeyConfig(id="a", sha256=digest.upper()).sha256 == digest


# ------------------------------------------------------------------------------------ vLLM parts


def test_vllm_engine_module_imports_without_vllm():
    code = "import sys, llmops.gateway.engines.vllm as m; print(m.VllmEngine.__name__, 'vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["VllmEngine", "False"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_without_vllm_names_the_extra():
    from llmops.errors import MissingExtraError
    from llmops.gateway.engines.vllm import VllmEngine

    with pytest.raises(MissingExtraError, match=r"pip install 'llmops\[vllm\]'"):
        VllmEngine("org/model")


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(max_tokens=16), {"max_tokens": 16, "temperature": 0.0, "n": 1, "ignore_eos": False,
                                     "detokenize": False, "skip_special_tokens": True}),
    (SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, top_k=40, repetition_penalty=1.1, seed=3,
                    logprobs=2, ignore_eos=True),
     {"max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1, "seed": 3,
      "logprobs": 2, "ignore_eos": True, "n": 1, "detokenize": False, "skip_special_tokens": True}),
    (SamplingParams(max_tokens=4, top_k=0, logprobs=0),
     {"max_tokens": 4, "temperature": 0.0, "logprobs": 0, "n": 1, "ignore_eos": False, "detokenize": False,
      "skip_special_tokens": True}),
])
def test_sampling_params_map_to_vllm_kwargs(params, expected):
    from llmops.gateway.engines.vllm import sampling_kwargs

    assert sampling_kwargs(params) == expected


def test_lora_ids_are_stable_unique_and_reusable():
    from llmops.gateway.engines.vllm import LoraBook

    book, other = LoraBook(), LoraBook()
    first = book.add("capitals/1", "/a/1")
    second = book.add("capitals/2", "/a/2")
    assert first.int_id != second.int_id and first.int_id > 0 and second.int_id > 0
    assert other.add("capitals/2", "/a/2").int_id == second.int_id  # same name, same id, across restarts
    assert book.add("capitals/1", "/a/1") == first and len(book) == 2
    assert book.add("capitals/1", "/moved").int_id == first.int_id
    assert book.get("capitals/1").path == "/moved"
    natural = LoraBook().add("x", "/x").int_id
    clash = LoraBook()
    clash._ids.add(natural)  # another adapter already holds x's natural id: x takes the next free one
    assert clash.add("x", "/x").int_id == natural + 1
    assert book.remove("capitals/1").int_id == first.int_id and "capitals/1" not in book
    with pytest.raises(KeyError):
        book.get("capitals/1")


# ------------------------------------------------------------------------------- upstream config


def test_upstream_config_normalises_urls():
    from llmops.gateway.engines.upstream import UpstreamConfig

    config = UpstreamConfig(urls=["http://a:8000/v1/", "http://b:8000"])
    assert config.urls == ["http://a:8000", "http://b:8000"]
    with pytest.raises(ValueError, match="http"):
        UpstreamConfig(urls=["a:8000"])
    with pytest.raises(ValueError, match="once"):
        UpstreamConfig(urls=["http://a", "http://a/v1"])


def test_keys_cli_prints_a_new_key_and_its_hash():
    from typer.testing import CliRunner

    from llmops.cli.app import app

    result = CliRunner().invoke(app, ["keys", "hash", "--id", "team-a"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines()[:2])
    key = lines["key"].split()[0]
    assert lines["sha256"].strip() == hash_key(key)
    assert "id: team-a" in result.output
    result = CliRunner().invoke(app, ["keys", "hash", "--stdin"], input="sk-given\n")
    assert hash_key("sk-given") in result.output and "sk-given" not in result.output
