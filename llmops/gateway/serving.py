"""In-process serving logic for chat and text completions: tokenize, generate, assemble.

The pipeline has already validated the request, rendered its registry prompt, checked its limits
and resolved its model version. Everything that can still fail because of the request (a chat
template that rejects the messages, a prompt too long for the context, token ids outside the
vocabulary) fails in `prepare_*`, before a stream starts, so it still gets its 4xx status.
Generation then runs the sequences on the engine, reporting each token to the `RequestContext`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from llmops.gateway.context import RequestContext
from llmops.gateway.engines.base import GenerationRequest, SamplingParams
from llmops.gateway.errors import GatewayError, from_exception, internal_error
from llmops.gateway.text import TextAssembler

__all__ = ["Prepared", "ChoiceResult", "CompletionService"]

_log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A validated request, ready to generate: route, token ids, sampling parameters."""

    route: Any
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per choice of one prompt
    stop: list[str]
    echo_texts: list[str]
    stream: bool = False


@dataclass
class ChoiceResult:
    """One finished choice."""

    index: int
    text: str = ""
    finish_reason: Optional[str] = None
    tokens: list = field(default_factory=list)  # TokenEvents, for logprobs


def _log_unknown_fields(request: Any, ctx: RequestContext) -> None:
    extra = sorted((request.model_extra or {}).keys())
    if extra:
        _log.info("request %s: ignored unknown field(s): %s", ctx.request_id, ", ".join(extra))


def _reject_unsupported(request: Any) -> None:
    if request.declared("tools"):
        raise GatewayError(400, "tools are not supported by this model server", param="tools")
    fmt = request.declared("response_format")
    if fmt and fmt.get("type", "text") != "text":
        raise GatewayError(400, f"response_format {fmt.get('type')!r} is not supported", param="response_format")
    for name in ("frequency_penalty", "presence_penalty"):
        if request.declared(name):
            raise GatewayError(400, f"{name} is not supported; use the repetition_penalty extension", param=name)
    if request.declared("logit_bias"):
        raise GatewayError(400, "logit_bias is not supported", param="logit_bias")
    if request.declared("suffix"):
        raise GatewayError(400, "suffix is not supported", param="suffix")
    if request.declared("min_p"):
        raise GatewayError(400, "min_p is not supported by the in-process engines", param="min_p")
    if request.declared("min_tokens"):
        raise GatewayError(400, "min_tokens is not supported by the in-process engines", param="min_tokens")
    if request.declared("best_of") not in (None, request.declared("n") or 1):
        raise GatewayError(400, "best_of other than n is not supported", param="best_of")


class CompletionService:
    """Chat and text completions on in-process engines.

    Args:
        limits: `LimitsConfig`.
    """

    def __init__(self, limits: Any):
        self.limits = limits

    def _sampling(self, request: Any, engine: Any, prompt_len: int, plan: Any,
                  logprobs: Optional[int]) -> list[SamplingParams]:
        room = engine.max_context - prompt_len
        if room <= 0:
            raise GatewayError(400, f"This model's maximum context length is {engine.max_context} tokens; "
                               f"the prompt has {prompt_len}", param="messages", code="context_length_exceeded")
        explicit = request.requested_max_tokens()
        if explicit and explicit > room:
            raise GatewayError(400, f"This model's maximum context length is {engine.max_context} tokens; you "
                               f"requested {prompt_len + explicit} ({prompt_len} in the prompt, {explicit} to "
                               "generate)", param="max_tokens", code="context_length_exceeded")
        temperature = request.temperature
        if temperature is None and getattr(engine, "samples_by_default", False):
            temperature = 1.0
        seed, n = request.seed, request.n or 1
        # Seeds of the n choices differ; they wrap within the int64 range the protocol allows.
        return [SamplingParams(
            max_tokens=min(plan.max_tokens, room), temperature=temperature, top_p=request.top_p,
            top_k=request.top_k, repetition_penalty=request.repetition_penalty,
            seed=None if seed is None else (seed + i) % 2**63, logprobs=logprobs,
            ignore_eos=bool(request.ignore_eos),
        ) for i in range(n)]

    async def prepare_chat(self, request: Any, route: Any, plan: Any, ctx: RequestContext) -> Prepared:
        """Tokenize the (rendered) messages with the model's chat template."""
        _log_unknown_fields(request, ctx)
        _reject_unsupported(request)
        if not request.messages:
            raise GatewayError(400, "'messages' is a required property", param="messages",
                               code="missing_required_parameter")
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            prompt_ids = await asyncio.to_thread(route.engine.encode_chat, messages)
        except Exception as error:
            raise from_exception(error, param="messages") from None
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self._sampling(request, route.engine, len(prompt_ids), plan, logprobs)
        return Prepared(route, [prompt_ids], params, request.stop_list(), [""], stream=bool(request.stream))

    async def prepare_completion(self, request: Any, route: Any, plan: Any, ctx: RequestContext) -> Prepared:
        """Tokenize the prompt(s): a string, strings, token ids or lists of token ids."""
        _log_unknown_fields(request, ctx)
        _reject_unsupported(request)
        engine = route.engine
        prompt = request.prompt
        if isinstance(prompt, str):
            texts: list = [prompt]
        elif prompt and isinstance(prompt[0], int):
            texts = [list(prompt)]
        else:
            texts = list(prompt)
        try:
            prompts = await asyncio.to_thread(lambda: [t if isinstance(t, list) else engine.encode_text(t)
                                                       for t in texts])
        except Exception as error:
            raise from_exception(error, param="prompt") from None
        vocab = len(getattr(engine, "tokenizer", ())) or None
        if vocab and any(not 0 <= i < vocab for p in prompts for i in p):
            raise GatewayError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not all(prompts):
            raise GatewayError(400, "prompt is empty", param="prompt")
        longest = max(map(len, prompts))
        params = self._sampling(request, engine, longest, plan, request.logprobs)
        echo = [engine.decode(p) if request.echo else "" for p in prompts]
        return Prepared(route, prompts, params, request.stop_list(), echo, stream=bool(request.stream))

    # --------------------------------------------------------------------------------- generate

    async def generate(self, prepared: Prepared, ctx: RequestContext) -> AsyncIterator[tuple]:
        """Run every choice; yield `(index, text delta, TokenEvent or None, finish_reason or None)`.

        Choices of all prompts run concurrently (so they batch on the engine); closing this iterator
        cancels all of them.
        """
        queue: asyncio.Queue = asyncio.Queue()
        engine, route = prepared.route.engine, prepared.route
        ctx.prompt_tokens = sum(len(p) for p in prepared.prompts)
        n = len(prepared.params)

        # Text is assembled token by token only when someone needs it early (a stream, or stop strings
        # to find); otherwise the ids are decoded once at the end, which saves the event loop (and the
        # GIL it shares with the engine) a full decode per token.
        incremental = prepared.stream or bool(prepared.stop)
        token_ids = ctx.token_ids

        # The sequences of one client request share a group, so the engine admits requests fairly
        # (a 32,000-sequence request cannot starve another client's chat); a fresh object, never client data.
        group = object()

        async def run(index: int, prompt_ids: list[int], params: SamplingParams) -> None:
            assembler = TextAssembler(engine.decode, prepared.stop)
            # The gateway's own id keys the engine's sequences; a client's x-request-id never does.
            request = GenerationRequest(f"{ctx.request_id}-{index}", prompt_ids, params, route.adapter,
                                        stream=incremental, group=group)
            finish = "abort"
            events = engine.generate(request)
            try:
                async for event in events:
                    # Latencies come from the engine's stamps: tokens may arrive in one batch at the end.
                    ctx.token(event.time_ns or time.time_ns(), index)
                    ctx.completion_tokens += 1
                    if token_ids is not None:
                        token_ids.setdefault(index, []).append(event.token_id)
                    if event.finish_reason == "error":
                        _log.error("request %s: the engine failed while generating sequence %d",
                                   ctx.request_id, index)
                        raise internal_error(ctx.request_id)
                    if not incremental:
                        assembler.token_ids.append(event.token_id)
                        delta = assembler.finish() if event.finish_reason is not None else ""
                        queue.put_nowait((index, delta, event, None))
                        if event.finish_reason is not None:
                            finish = event.finish_reason
                        continue
                    delta = assembler.add(event.token_id)
                    if assembler.stopped:
                        finish = "stop"
                        queue.put_nowait((index, delta, event, None))
                        break
                    if event.finish_reason is not None:
                        finish = event.finish_reason
                        delta += assembler.finish()
                    queue.put_nowait((index, delta, event, None))
            except Exception as error:  # handed to the consumer, which raises it
                queue.put_nowait(error)
                return
            finally:
                await events.aclose()
            queue.put_nowait((index, "", None, finish))

        tasks = [asyncio.ensure_future(run(p * n + i, ids, params))
                 for p, ids in enumerate(prepared.prompts) for i, params in enumerate(prepared.params)]
        pending = len(tasks)
        try:
            while pending:
                item = await queue.get()
                if isinstance(item, Exception):
                    raise item
                if item[3] is not None:
                    pending -= 1
                    ctx.finish_choice(item[0], item[3])
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self, prepared: Prepared, ctx: RequestContext) -> list[ChoiceResult]:
        """Run to completion; the choices in index order."""
        results: dict[int, ChoiceResult] = {}
        async for index, delta, event, finish in self.generate(prepared, ctx):
            choice = results.setdefault(index, ChoiceResult(index))
            choice.text += delta
            if event is not None:
                choice.tokens.append(event)
            if finish is not None:
                choice.finish_reason = finish
        return [results[i] for i in sorted(results)]
