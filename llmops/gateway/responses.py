"""Assemble OpenAI responses and SSE streams from generated choices (in-process backend).

A stream ends with `data: [DONE]`; an error in its middle propagates to the pipeline, which reports
it in-band the same way for both backends.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Optional

from llmops.gateway.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionLogprobs,
    CompletionResponse,
    TokenLogprob,
    TopLogprob,
    UsageInfo,
)

__all__ = ["chat_response", "chat_stream", "completion_response", "completion_stream", "sse"]


DONE = "data: [DONE]\n\n"


def sse(payload: Any) -> str:
    """One server-sent event line holding `payload` (a pydantic model or a dict)."""
    if hasattr(payload, "model_dump_json"):
        return f"data: {payload.model_dump_json(exclude_unset=False)}\n\n"
    return f"data: {json.dumps(payload)}\n\n"


def _usage(ctx: Any) -> UsageInfo:
    return UsageInfo(prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
                     total_tokens=ctx.prompt_tokens + ctx.completion_tokens)


def _token_logprob(engine: Any, event: Any) -> TokenLogprob:
    text = engine.token_text(event.token_id)
    return TokenLogprob(
        token=text, logprob=event.logprob, bytes=list(text.encode()),
        top_logprobs=[TopLogprob(token=(t := engine.token_text(i)), logprob=lp, bytes=list(t.encode()))
                      for i, lp in event.top_logprobs],
    )


def _chat_logprobs(engine: Any, events: list, wanted: bool) -> Optional[ChoiceLogprobs]:
    if not wanted:
        return None
    return ChoiceLogprobs(content=[_token_logprob(engine, e) for e in events if e.logprob is not None])


def _completion_logprobs(engine: Any, events: list, wanted: bool, offset: int = 0) -> Optional[CompletionLogprobs]:
    if not wanted:
        return None
    result = CompletionLogprobs()
    for event in events:
        if event.logprob is None:
            continue
        text = engine.token_text(event.token_id)
        result.tokens.append(text)
        result.token_logprobs.append(event.logprob)
        result.text_offset.append(offset)
        result.top_logprobs.append({engine.token_text(i): lp for i, lp in event.top_logprobs} or None)
        offset += len(text)
    return result


def _wants_logprobs(prepared: Any) -> bool:
    return prepared.params[0].logprobs is not None


def chat_response(prepared: Any, ctx: Any, choices: list, model: str, response_id: str) -> ChatCompletionResponse:
    """The non-streamed chat completion."""
    engine, wanted = prepared.route.engine, _wants_logprobs(prepared)
    return ChatCompletionResponse(
        id=response_id, model=model, usage=_usage(ctx),
        choices=[{"index": c.index, "message": {"role": "assistant", "content": c.text},
                  "logprobs": _chat_logprobs(engine, c.tokens, wanted), "finish_reason": c.finish_reason}
                 for c in choices],
    )


def completion_response(prepared: Any, ctx: Any, choices: list, model: str, response_id: str) -> CompletionResponse:
    """The non-streamed text completion (`echo` puts the prompt in front)."""
    engine, wanted, n = prepared.route.engine, _wants_logprobs(prepared), len(prepared.params)
    return CompletionResponse(
        id=response_id, model=model, usage=_usage(ctx),
        choices=[{"index": c.index, "text": prepared.echo_texts[c.index // n] + c.text,
                  "logprobs": _completion_logprobs(engine, c.tokens, wanted), "finish_reason": c.finish_reason}
                 for c in choices],
    )


def chat_stream(service: Any, prepared: Any, ctx: Any, model: str, response_id: str,
                include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks: a role chunk per choice, content deltas, a finish chunk, then usage if asked."""
    engine, wanted = prepared.route.engine, _wants_logprobs(prepared)

    async def events() -> AsyncIterator[str]:
        started: set[int] = set()
        async for index, delta, event, finish in service.generate(prepared, ctx):
            if index not in started:
                started.add(index)
                yield sse(ChatCompletionChunk(id=response_id, model=model, choices=[
                    {"index": index, "delta": {"role": "assistant", "content": ""}}]))
            if finish is not None:
                yield sse(ChatCompletionChunk(id=response_id, model=model, choices=[
                    {"index": index, "delta": {}, "finish_reason": finish}]))
            elif delta or (wanted and event is not None):
                logprobs = _chat_logprobs(engine, [event], wanted) if event is not None else None
                yield sse(ChatCompletionChunk(id=response_id, model=model, choices=[
                    {"index": index, "delta": {"content": delta}, "logprobs": logprobs}]))
        if include_usage:
            yield sse(ChatCompletionChunk(id=response_id, model=model, choices=[], usage=_usage(ctx)))
        yield DONE

    return events()


def completion_stream(service: Any, prepared: Any, ctx: Any, model: str, response_id: str,
                      include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks of a text completion (OpenAI streams `text_completion` objects)."""
    engine, wanted, n = prepared.route.engine, _wants_logprobs(prepared), len(prepared.params)

    async def events() -> AsyncIterator[str]:
        echoed: set[int] = set()
        async for index, delta, event, finish in service.generate(prepared, ctx):
            if index not in echoed:
                echoed.add(index)
                delta = prepared.echo_texts[index // n] + delta
            if finish is not None:
                yield sse(CompletionResponse(id=response_id, model=model, choices=[
                    {"index": index, "text": delta, "finish_reason": finish}]))
            elif delta or (wanted and event is not None):
                logprobs = _completion_logprobs(engine, [event], wanted) if event is not None else None
                yield sse(CompletionResponse(id=response_id, model=model, choices=[
                    {"index": index, "text": delta, "logprobs": logprobs}]))
        if include_usage:
            yield sse(CompletionResponse(id=response_id, model=model, choices=[], usage=_usage(ctx)))
        yield DONE

    return events()
