"""A stand-in for `vllm serve --enable-lora` (vLLM cannot run here), following vLLM's source:

- `/v1/load_lora_adapter` exists only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING` (otherwise FastAPI's 404
  `{"detail": "Not Found"}`), and answers as `OpenAIServingModels.load_lora_adapter` does
  (vllm/entrypoints/openai/models/serving.py, vllm/entrypoints/serve/lora/api_router.py):
  200 `Success: LoRA adapter 'X' added successfully.`; 400 `… has already been loaded …`;
  404 `NotFoundError` `Loading lora X failed: No adapter found for PATH` (vllm/exceptions.py
  LoRAAdapterNotFoundError); 500 `InternalServerError` when the engine fails to load the files.
  Errors use vLLM's body `{"error": {"message", "type", "param", "code"}}`.
- A request for an unknown model asks every registered LoRA resolver (`resolve_lora`): 404
  `NotFoundError` when none finds it, 400 when one finds it but it does not load.
- General plugins are loaded as vLLM loads `vllm.general_plugins` entry points; the entry point value
  comes from `FAKE_VLLM_PLUGINS` (the test reads it from llmops' pyproject.toml, since the installed
  distribution's metadata may predate this tree). `vllm.lora.request` and `vllm.lora.resolver` are
  provided with the classes and signatures of vLLM's own.

"Loading" an adapter reads its `adapter_config.json` (`{"fail": true}` makes the engine fail); the
answer names the adapter and the folder it was loaded from, so a test sees which files served it.

    python tests/fake_vllm.py PORT BASE_MODEL_PATH SERVED_NAME
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import json
import os
import sys
import types
from pathlib import Path

from fastapi import FastAPI, Request  # at module level: the handlers' annotations are strings
from fastapi.responses import JSONResponse, Response


def _install_vllm_modules() -> types.ModuleType:
    @dataclasses.dataclass
    class LoRARequest:  # vllm/lora/request.py
        lora_name: str
        lora_int_id: int
        lora_path: str = ""
        base_model_name: str | None = None

    class LoRAResolver(abc.ABC):  # vllm/lora/resolver.py
        @abc.abstractmethod
        async def resolve_lora(self, base_model_name: str, lora_name: str): ...

    class _Registry:
        def __init__(self):
            self.resolvers = {}

        def get_supported_resolvers(self):
            return self.resolvers.keys()

        def register_resolver(self, name, resolver):
            self.resolvers[name] = resolver

        def get_resolver(self, name):
            return self.resolvers[name]

    vllm, lora = types.ModuleType("vllm"), types.ModuleType("vllm.lora")
    request, resolver = types.ModuleType("vllm.lora.request"), types.ModuleType("vllm.lora.resolver")
    request.LoRARequest = LoRARequest
    resolver.LoRAResolver, resolver.LoRAResolverRegistry = LoRAResolver, _Registry()
    vllm.lora, lora.request, lora.resolver = lora, request, resolver
    sys.modules.update({"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request, "vllm.lora.resolver": resolver})
    return resolver


def _error(message: str, kind: str, code: int):
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}}, status_code=code)


def make_app(base_model: str, served_name: str):
    resolver_module = _install_vllm_modules()
    for spec in filter(None, os.environ.get("FAKE_VLLM_PLUGINS", "").split(",")):
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr)()
    registry = resolver_module.LoRAResolverRegistry
    runtime = os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true")
    loaded: dict[str, str] = {}
    app = FastAPI()

    def add_lora(name: str, path: str) -> None:  # the engine: raises as vLLM's worker does
        config = Path(path) / "adapter_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"Loading lora {name} failed: No adapter found for {path}")
        if json.loads(config.read_text()).get("fail"):
            raise RuntimeError(f"Loading lora {name} failed: unsupported target modules")
        loaded[name] = path

    @app.get("/health")
    async def health():
        return Response(status_code=200)

    @app.get("/stats")
    async def stats():
        return {"loaded": loaded}

    if runtime:
        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request):
            body = await request.json()
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
            if name in loaded and not body.get("load_inplace"):
                return _error(f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                              "in place, set 'load_inplace' to True.", "InvalidUserInput", 400)
            try:
                add_lora(name, path)
            except FileNotFoundError as error:
                return _error(str(error), "NotFoundError", 404)
            except Exception as error:
                return _error(str(error), "InternalServerError", 500)
            return Response(status_code=200, content=f"Success: LoRA adapter '{name}' added successfully.")

    async def resolve(name: str):
        found = False
        for resolver_name in list(registry.get_supported_resolvers()):
            lora = await registry.get_resolver(resolver_name).resolve_lora(base_model, name)
            if lora is not None:
                found = True
                try:
                    add_lora(name, lora.lora_path)
                    return None
                except Exception:
                    continue
        if found:
            return _error(f"LoRA adapter '{name}' was found but could not be loaded.", "BadRequestError", 400)
        return _error(f"The model `{name}` does not exist.", "NotFoundError", 404)

    @app.post("/v1/completions")
    @app.post("/v1/chat/completions")
    async def generate(request: Request):
        body = await request.json()
        model = body.get("model")
        if model != served_name and model not in loaded:
            if not runtime:
                return _error(f"The model `{model}` does not exist.", "NotFoundError", 404)
            failure = await resolve(model)
            if failure is not None:
                return failure
        text = f"base {served_name}" if model == served_name else f"adapter {model} from {loaded[model]}"
        chat = request.url.path.endswith("chat/completions")
        choice = {"index": 0, "finish_reason": "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse({"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                             "created": 0, "model": model, "choices": [choice],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}})

    return app


if __name__ == "__main__":
    import uvicorn

    port, base, served = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(make_app(base, served), host="127.0.0.1", port=port, log_level="warning")
