"""`/openapi.json`: every endpoint's request and response bodies and its errors, in OpenAI's field names.

Built from the same pydantic wire models that validate requests (`protocol.py`), so the document
cannot drift from what the gateway accepts; schema-driven tools (schemathesis, SDK generators, API
gateways) can use it as is.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["openapi_document"]

_ERRORS = {
    "400": "The request is malformed: invalid JSON, a wrong type or value, or a limit exceeded.",
    "401": "No API key, or an unknown one.",
    "403": "The API key may not call this model or use this registry prompt.",
    "404": "Unknown model or registry prompt.",
    "413": "The request body exceeds `limits.max_body_bytes`.",
    "429": "The API key's rate limit is reached (see the Retry-After header).",
    "500": "A bug in the gateway: the message carries the request id to look up in its log.",
    "502": "The upstream replica failed (fleet backend).",
    "504": "The request took longer than `limits.request_timeout`.",
}


def _json(ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _errors(codes: list[str]) -> dict:
    return {code: {"description": _ERRORS[code], "content": _json("ErrorResponse")} for code in codes}


def _generation(summary: str, request: str, response: str, chunk: str) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": _json(request)},
        "responses": {
            "200": {"description": "The completion; with `stream: true`, server-sent events of chunks ending "
                                   "with `data: [DONE]`.",
                    "content": {**_json(response),
                                "text/event-stream": {"schema": {"$ref": f"#/components/schemas/{chunk}"}}}},
            **_errors(["400", "401", "403", "404", "413", "429", "500", "502", "504"]),
        },
    }}


def openapi_document() -> bytes:
    """The OpenAPI 3.1 document of the gateway, as JSON bytes."""
    from pydantic.json_schema import models_json_schema

    from llmops import __version__
    from llmops.gateway import protocol as p

    inputs = [p.ChatCompletionRequest, p.CompletionRequest, p.EmbeddingRequest]
    outputs = [p.ChatCompletionResponse, p.ChatCompletionChunk, p.CompletionResponse, p.EmbeddingResponse,
               p.ModelList, p.ErrorResponse]
    _, schema = models_json_schema([(m, "validation") for m in inputs] + [(m, "serialization") for m in outputs],
                                   ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {
        "/v1/chat/completions": _generation("Chat completion (OpenAI-compatible; registry prompts through "
                                            "`prompt` + `variables`)", "ChatCompletionRequest",
                                            "ChatCompletionResponse", "ChatCompletionChunk"),
        "/v1/completions": _generation("Text completion (OpenAI-compatible)", "CompletionRequest",
                                       "CompletionResponse", "CompletionResponse"),
        "/v1/embeddings": {"post": {
            "summary": "Embeddings of the input texts or token ids",
            "requestBody": {"required": True, "content": _json("EmbeddingRequest")},
            "responses": {"200": {"description": "The embeddings.", "content": _json("EmbeddingResponse")},
                          **_errors(["400", "401", "403", "404", "413", "429", "500", "502", "504"])},
        }},
        "/v1/models": {"get": {
            "summary": "The models this key may call, with their resolved versions",
            "responses": {"200": {"description": "The models.", "content": _json("ModelList")},
                          **_errors(["401", "500"])},
        }},
        "/health": {"get": {"summary": "Liveness and per-engine or per-replica state", "security": [],
                            "responses": {"200": {"description": "OK",
                                                  "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (`llmops:` prefix)", "security": [],
                             "responses": {"200": {"description": "Text exposition format.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **_errors(["401"])}}},
    }
    document = {
        "openapi": "3.1.0",
        "info": {"title": "llmops gateway", "version": __version__,
                 "description": "OpenAI-compatible API over registry models and prompts."},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
    return orjson.dumps(document)
