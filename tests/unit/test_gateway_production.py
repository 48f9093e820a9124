"""Production gateway parts without servers: keys, rate limits, capture files, the vLLM engine's
pure parts (SamplingParams mapping, LoRA ids), upstream config and the `llmops keys` CLI."""

from __future__ import annotations

import datetime as dt
import importlib.util
import subprocess
import sys
import textwrap

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


# ------------------------------------------------------------------------------------- capture


def _record(i: int, model_version: str = "capitals/2", when: float | None = None) -> dict:
    return {"time": when or 1_790_000_000.0 + i, "request_id": f"r{i}", "key_id": "team-a", "endpoint": "chat.completions",
            "model": "capitals@production", "model_version": model_version, "status": 200,
            "prompt_token_ids": [1, 2, i], "completion_token_ids": [[10 + i, 11 + i]], "finish_reasons": ["stop"],
            "prompt_tokens": 3, "completion_tokens": 2, "latency_ms": 12.5, "ttft_ms": 3.0,
            "prompt_text": "secret prompt", "completion_text": ["answer"]}


def test_capture_writes_partitioned_parquet_and_reads_it_back(tmp_path):
    from llmops.gateway import capture

    writer = capture.CaptureWriter(tmp_path / "traffic", flush_interval=0.05)
    for i in range(25):
        writer.submit(_record(i))
    writer.submit(lambda: _record(99, model_version="tiny/1"))  # built on the writer thread
    writer.close()
    files = sorted(p.relative_to(tmp_path / "traffic").parts[:2] for p in (tmp_path / "traffic").rglob("*.parquet"))
    assert {f for f in files} == {("date=2026-09-21", "model=capitals"), ("date=2026-09-21", "model=tiny")}
    assert not list((tmp_path / "traffic").rglob("*.tmp"))
    records = capture.read(model="capitals@production", root=tmp_path / "traffic")
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(25)]
    assert records[7]["prompt_token_ids"] == [1, 2, 7] and records[7]["completion_token_ids"] == [[17, 18]]
    assert records[7]["prompt_text"] is None and records[7]["completion_text"] is None  # text off by default
    assert records[0]["time"].tzinfo is not None
    assert len(capture.read(root=tmp_path / "traffic")) == 26
    since = dt.datetime.fromtimestamp(1_790_000_020, dt.timezone.utc)
    assert len(capture.read(model="capitals", since=since, root=tmp_path / "traffic")) == 5
    assert capture.read(since="1h", root=tmp_path / "traffic") == []  # all of it is older than an hour
    assert capture.read(model="nothing", root=tmp_path / "traffic") == []


def test_capture_keeps_text_only_when_configured(tmp_path):
    from llmops.gateway import capture

    writer = capture.CaptureWriter(tmp_path, flush_interval=10, keep_text=True)
    writer.submit(_record(1))
    writer.close()
    (record,) = capture.read(root=tmp_path)
    assert record["prompt_text"] == "secret prompt" and record["completion_text"] == ["answer"]


def test_capture_ignores_and_cleans_unfinished_files(tmp_path):
    from llmops.gateway import capture

    folder = tmp_path / "date=2026-01-01" / "model=x"
    folder.mkdir(parents=True)
    (folder / "part-crashed.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert capture.read(root=tmp_path) == []
    capture.CaptureWriter(tmp_path, flush_interval=10).close()
    assert not (folder / "part-crashed.parquet.tmp").exists()


def test_capture_survives_sigkill_with_only_readable_files(tmp_path):
    """A writer process killed with SIGKILL mid-stream leaves complete files only."""
    import pyarrow.parquet as pq

    script = textwrap.dedent(f"""
        import time
        from llmops.gateway.capture import CaptureWriter
        writer = CaptureWriter({str(tmp_path)!r}, flush_interval=0.01)
        i = 0
        while True:
            for _ in range(50):
                writer.submit({{"time": time.time(), "request_id": str(i), "model_version": "m/1",
                               "prompt_token_ids": list(range(200)), "completion_token_ids": [list(range(200))]}})
                i += 1
            time.sleep(0.002)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = 60
        import time

        start = time.monotonic()
        while len(list(tmp_path.rglob("*.parquet"))) < 5:
            assert time.monotonic() - start < deadline and process.poll() is None
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    from llmops.gateway import capture

    for path in tmp_path.rglob("*.parquet"):
        pq.read_table(path)  # every finished name is a complete file
    records = capture.read(root=tmp_path)
    assert len(records) >= 5 and all(len(r["prompt_token_ids"]) == 200 for r in records)


# ------------------------------------------------------------------------------------ vLLM parts


def test_vllm_engine_module_imports_without_vllm():
    code = "import sys, llmops.gateway.engines.vllm as m; print(m.VllmEngine.__name__, 'vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["VllmEngine", "False"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_engine_without_vllm_names_the_extra():
    from llmops.errors import MissingExtraError
    from llmops.gateway.engines.vllm import VllmEngine

    with pytest.raises(MissingExtraError, match=r"pip install 'llmops\[gpu\]'"):
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
