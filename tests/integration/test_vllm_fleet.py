"""Adapters on every replica (issue 12, item 4), with a real tracking server (proxied artifacts):

- the llmops vLLM LoRA resolver resolves `NAME/VERSION` from the server into the artifact cache;
- the gateway (`llmops serve`, upstream engine) serves a registry adapter through two replicas that
  follow vLLM's protocol (tests/fake_vllm.py) and run the resolver through its entry point;
- vLLM's `/v1/load_lora_adapter` answers are read as vLLM's source defines them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import re
from pathlib import Path

import pytest

from tests.services import free_port, mlflow_server, wait_http as _wait

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
FAKE_VLLM = ROOT / "tests" / "fake_vllm.py"


def _entry_point() -> str:
    """The entry point llmops ships for vLLM (read from pyproject.toml; tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."vllm.general_plugins"]', 1)[1]
    return re.search(r'^llmops_registry_resolver\s*=\s*"([^"]+)"', section, re.M).group(1)


def _adapter(folder: Path, base: Path, **extra) -> Path:
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": 4, **extra}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(1024))
    return folder



class _Replica:
    def __init__(self, folder: Path, base: Path, env: dict, runtime: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cache = folder / f"replica-{self.port}-cache"
        env = {**env, "LLMOPS_CACHE_DIR": str(self.cache), "FAKE_VLLM_PLUGINS": _entry_point(),
               "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if runtime else "False"}
        self.process = subprocess.Popen([sys.executable, str(FAKE_VLLM), str(self.port), str(base), "tiny/1"], env=env)
        _wait(self.url + "/health", self.process)

    def loaded(self) -> dict:
        return httpx.get(self.url + "/stats").json()["loaded"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


@pytest.fixture(scope="module")
def fleet_store(tmp_path_factory, tiny_model_path):
    """A tracking server with tiny/1 (base), capitals@production and broken@production (adapters)."""
    folder = tmp_path_factory.mktemp("fleet")
    with mlflow_server(f"sqlite:///{folder / 'server.db'}", folder / "server", artifacts="proxied") as server:
        patch = pytest.MonkeyPatch()
        patch.setenv("MLFLOW_TRACKING_URI", server.url)
        patch.setenv("LLMOPS_CACHE_DIR", str(folder / "test-cache"))
        patch.chdir(folder)
        from llmops import registry

        registry.register_base_model("tiny", tiny_model_path)
        registry.register_adapter("capitals", _adapter(folder / "good", tiny_model_path), base="tiny/1",
                                  alias="production")
        registry.register_adapter("broken", _adapter(folder / "bad", tiny_model_path, fail=True), base="tiny/1",
                                  alias="production")
        yield {"url": server.url, "folder": folder}
        patch.undo()


def test_resolver_fetches_registry_adapters_into_the_cache(fleet_store, tiny_model_path):
    from llmops import registry
    from llmops.registry.vllm_resolver import resolve_registry_adapter

    version = registry.resolve_model_ref("capitals@production")
    assert version.source.startswith("mlflow-artifacts:")
    path = resolve_registry_adapter(str(tiny_model_path), "capitals/1")
    assert path == fleet_store["folder"] / "test-cache" / "capitals" / "1" / version.digest.removeprefix("sha256:")
    assert (path / "adapter_model.safetensors").read_bytes() == \
        (fleet_store["folder"] / "good" / "adapter_model.safetensors").read_bytes()
    assert resolve_registry_adapter("tiny/1", "capitals/1") == path  # the base by its registry ref
    assert resolve_registry_adapter("/models/some-other-base", "capitals/1") is None  # another base
    assert resolve_registry_adapter(str(tiny_model_path), "capitals@production") is None  # aliases move
    assert resolve_registry_adapter(str(tiny_model_path), "capitals/9") is None
    assert resolve_registry_adapter(str(tiny_model_path), "tiny/1") is None  # a base, not an adapter
    assert resolve_registry_adapter(str(tiny_model_path), "not a ref") is None


@pytest.fixture(scope="module")
def gateway(fleet_store, tiny_model_path):
    folder = fleet_store["folder"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": fleet_store["url"]}
    replicas = [_Replica(folder, tiny_model_path, env), _Replica(folder, tiny_model_path, env)]
    port = free_port()
    config = folder / "gateway.yaml"
    config.write_text(json.dumps({
        "kind": "gateway", "host": "127.0.0.1", "port": port, "models": ["capitals@production", "broken@production"],
        "engine": {"kind": "upstream", "upstream": {"urls": [r.url for r in replicas], "retries": 1,
                                                     "health_interval": 0.5, "timeout": 30}},
    }))
    process = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config)],
                               env={**env, "LLMOPS_CACHE_DIR": str(folder / "gateway-cache")}, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/health", process)
        yield {"url": url, "replicas": replicas}
    finally:
        process.terminate()
        process.wait(30)
        for replica in replicas:
            replica.stop()


def test_the_gateway_serves_a_registry_adapter_on_every_replica(gateway):
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)
    answers = {client.chat.completions.create(model="capitals@production", max_tokens=4,
                                              messages=[{"role": "user", "content": "Capital of Peru?"}]
                                              ).choices[0].message.content for _ in range(6)}
    caches = {str(r.cache) for r in gateway["replicas"]}
    assert {a.split(" from ")[0] for a in answers} == {"adapter capitals/1"}
    assert {str(Path(a.split(" from ")[1]).parents[2]) for a in answers} == caches  # each replica's own cache
    for replica in gateway["replicas"]:
        assert list(replica.loaded()) == ["capitals/1"]


def test_a_failed_load_is_a_502_and_the_replicas_stay_in_rotation(gateway):
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="broken@production", max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502
    assert failed.value.body["code"] == "adapter_load_failed"
    assert "could not be loaded" in failed.value.body["message"]
    upstreams = httpx.get(gateway["url"] + "/health").json()["upstreams"]
    assert all(state["healthy"] for state in upstreams.values()), upstreams
    ok = client.chat.completions.create(model="capitals@production", max_tokens=4,
                                        messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content.startswith("adapter capitals/1")


def test_load_lora_adapter_answers_are_read_as_vllm_defines_them(tmp_path, tiny_model_path):
    """Local paths go through `/v1/load_lora_adapter`: success, "already loaded", "no adapter found",
    a failed load, and a replica without the route."""
    from llmops.gateway.engines.upstream import ReplicaPool, UpstreamConfig
    from llmops.gateway.errors import GatewayError

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    runtime = _Replica(tmp_path, tiny_model_path, env)
    static = _Replica(tmp_path, tiny_model_path, env, runtime=False)
    good = _adapter(tmp_path / "good", tiny_model_path)
    bad = _adapter(tmp_path / "bad", tiny_model_path, fail=True)

    async def scenario():
        config = UpstreamConfig(urls=[runtime.url, static.url], health_interval=60)
        first, second = ReplicaPool(config), ReplicaPool(config)
        await first.start()
        await second.start()
        try:
            live, off = first.replicas
            await first._load_adapter(live, "good/1", str(good))
            await second._load_adapter(second.replicas[0], "good/1", str(good))  # "already loaded": fine
            with pytest.raises(GatewayError) as missing:
                await first._load_adapter(live, "gone/1", str(tmp_path / "nowhere"))
            with pytest.raises(GatewayError) as failing:
                await first._load_adapter(live, "bad/1", str(bad))
            await first._load_adapter(off, "good/1", str(good))  # no route: sent as is
            return live, off, missing.value, failing.value
        finally:
            await first.close()
            await second.close()

    try:
        live, off, missing, failing = asyncio.run(scenario())
    finally:
        runtime.stop()
        static.stop()
    assert (missing.status, missing.code) == (502, "adapter_load_failed")
    assert "cannot find the files of adapter gone/1" in missing.message
    assert (failing.status, failing.code) == (502, "adapter_load_failed")
    assert "could not load adapter bad/1 (500)" in failing.message
    assert live.healthy and off.healthy
    assert live.adapters == {"good/1"} and off.adapters == {"good/1"}
