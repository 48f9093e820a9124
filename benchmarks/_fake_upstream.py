"""A fixed-latency OpenAI-compatible upstream: canned answers after `latency_ms`, streams of `chunks`
canned tokens, `/health`, `/v1/models` and vLLM's `/v1/load_lora_adapter` (counted per name).
A body with `"fake_crash": true` kills the process (a request that crashes its replica, for tests);
`"fake_latency_ms": N` answers that request after N ms instead (a stream: spreads its chunks over N
ms); `"fake_chunks": N` streams N chunks, and `"fake_chunk_bytes": N` makes each chunk's text N letters.

It follows vLLM's OpenAI-compatible protocol where the gateway depends on it
(vllm/entrypoints/openai/protocol.py and serving_chat.py): `return_token_ids` adds `prompt_token_ids`
and per-choice `token_ids`; streams are `data: {...}` events ending with `data: [DONE]`; with
`stream_options.include_usage` the last event has `"choices": []` and the usage; errors are
`{"error": {"message", "type", "param", "code"}}` with the HTTP status as `code`.

    python benchmarks/_fake_upstream.py PORT [LATENCY_MS] [CHUNKS]

A raw ASGI app on uvicorn (httptools, uvloop when installed), so that it costs far less than any
gateway in front of it. Also used by the gateway's tests as a replica that can be killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

LOADS: dict[str, int] = {}
REQUESTS = [0]  # generation requests received


def make_app(latency_ms: float = 20.0, chunks: int = 20):
    tokens = [f" tok{i}" for i in range(chunks)]
    completion_ids = list(range(100, 100 + chunks))

    def answer(body: dict, chat: bool) -> bytes:
        text = "".join(tokens)
        choice = {"index": 0, "finish_reason": "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if body.get("return_token_ids"):
            choice["token_ids"] = completion_ids
        payload = {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                   "created": int(time.time()), "model": body.get("model", "fake"), "choices": [choice],
                   "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}}
        if body.get("return_token_ids"):
            payload["prompt_token_ids"] = [1, 2, 3, 4, 5]
        return json.dumps(payload).encode()

    def chunk(body: dict, chat: bool, i: int, count: int, filler: str) -> bytes:
        choice: dict = {"index": 0, "finish_reason": "length" if i == count - 1 else None}
        text = filler or f" tok{i}"
        if chat:
            choice["delta"] = {"content": text}
        else:
            choice["text"] = text
        if body.get("return_token_ids"):
            choice["token_ids"] = [100 + i]
        payload = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                   "created": 0, "model": body.get("model", "fake"), "choices": [choice]}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        path = scope["path"]
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        json_header = [(b"content-type", b"application/json")]
        if path in ("/health", "/v1/models"):
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})
            return
        if path == "/v1/load_lora_adapter":
            name = json.loads(raw)["lora_name"]
            LOADS[name] = LOADS.get(name, 0) + 1
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body", "body": f"Success: LoRA adapter '{name}' added".encode()})
            return
        if path == "/stats":
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body",
                        "body": json.dumps({"loads": LOADS, "requests": REQUESTS[0]}).encode()})
            return
        REQUESTS[0] += 1
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            error = {"error": {"message": "invalid JSON", "type": "BadRequestError", "param": None, "code": 400}}
            await send({"type": "http.response.start", "status": 400, "headers": json_header})
            await send({"type": "http.response.body", "body": json.dumps(error).encode()})
            return
        if body.get("fake_crash"):
            os._exit(1)
        if path == "/v1/embeddings":
            inputs = body.get("input")
            inputs = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else inputs or []
            data = [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(len(inputs))]
            tokens = sum(len(x) if isinstance(x, list) else len(str(x).split()) for x in inputs)
            payload = {"object": "list", "model": body.get("model"), "data": data,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body", "body": json.dumps(payload).encode()})
            return
        chat = path.endswith("chat/completions")
        if not body.get("stream"):
            await asyncio.sleep(body.get("fake_latency_ms", latency_ms) / 1000.0)
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body", "body": answer(body, chat)})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        count = int(body.get("fake_chunks", chunks))
        filler = "x" * int(body.get("fake_chunk_bytes", 0))
        step = body.get("fake_latency_ms", latency_ms) / 1000.0 / count
        for i in range(count):
            await asyncio.sleep(step)
            await send({"type": "http.response.body", "body": chunk(body, chat, i, count, filler), "more_body": True})
        tail = b""
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": "fake",
                     "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": count,
                                              "total_tokens": 5 + count}}
            tail = b"data: " + json.dumps(usage).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})

    return app


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    latency = float(sys.argv[2]) if len(sys.argv) > 2 else 20.0
    chunks = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    uvicorn.run(make_app(latency, chunks), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
