"""Serving logic for chat and text completions: resolve, render, generate; a result or a GatewayError.

Everything that can fail because of the request (unknown model or prompt, missing variables, too
many tokens) fails in `prepare_*`, before a stream starts, so it still gets its 4xx status.
Generation then runs `n` sequences on the engine and assembles either one response or SSE chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from llmops.gateway.engines.base import GenerationRequest, SamplingParams
from llmops.gateway.errors import GatewayError, from_exception
from llmops.gateway.protocol import ChatCompletionRequest, CompletionRequest
from llmops.gateway.text import TextAssembler

__all__ = ["RequestContext", "Prepared", "ChoiceResult", "CompletionService"]

_log = logging.getLogger(__name__)
_PROMPT_DEFAULTS = ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty", "seed", "stop")


@dataclass
class RequestContext:
    """Per-request state shared by the route, the serving logic, tracing and metrics."""

    request_id: str
    endpoint: str
    arrival: float = field(default_factory=time.perf_counter)
    arrival_ns: int = field(default_factory=time.time_ns)
    trace: Any = None
    headers: dict = field(default_factory=dict)
    labels: tuple = ("", "")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_ns: Optional[int] = None
    key_id: Optional[str] = None
    """The `id` of the caller's API key (never the key), None without auth."""
    token_ids: Optional[dict] = None
    """Choice index -> generated token ids, collected only when set to a dict (traffic capture)."""
    finish_reasons: dict = field(default_factory=dict)

    @property
    def ttft_ms(self) -> Optional[float]:
        """Time to first token in ms, None before it."""
        return None if self.first_token_ns is None else round((self.first_token_ns - self.arrival_ns) / 1e6, 3)


@dataclass
class Prepared:
    """A validated request, ready to generate: route, token ids, sampling parameters."""

    route: Any
    prompts: list[list[int]]
    params: list[SamplingParams]  # one per choice of one prompt
    stop: list[str]
    echo_texts: list[str]
    trace_inputs: Any = None
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
    if getattr(request, "tools", None):
        raise GatewayError(400, "tools are not supported by this model server", param="tools")
    fmt = getattr(request, "response_format", None)
    if fmt and fmt.get("type", "text") != "text":
        raise GatewayError(400, f"response_format {fmt.get('type')!r} is not supported", param="response_format")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(request, name, 0):
            raise GatewayError(400, f"{name} is not supported; use the repetition_penalty extension", param=name)
    if getattr(request, "logit_bias", None):
        raise GatewayError(400, "logit_bias is not supported", param="logit_bias")
    if getattr(request, "suffix", None):
        raise GatewayError(400, "suffix is not supported", param="suffix")


class CompletionService:
    """Chat and text completions on the routed engines.

    Args:
        router: `ModelRouter`.
        limits: `LimitsConfig`.
        metrics: `GatewayMetrics`.
    """

    def __init__(self, router: Any, limits: Any, metrics: Any):
        self.router = router
        self.limits = limits
        self.metrics = metrics

    # ---------------------------------------------------------------------------------- prepare

    async def _resolve(self, model: str, ctx: RequestContext):
        start = time.time_ns()
        try:
            route = await self.router.route(model)
        except Exception as error:
            raise from_exception(error, param="model") from None
        ctx.labels = route.labels
        ctx.headers["x-llmops-model-version"] = route.version.ref
        if ctx.trace is not None:
            ctx.trace.add_span("resolve", start, time.time_ns(), ref=model, version=route.version.ref)
            ctx.trace.set_tag("llmops.model", model)
            ctx.trace.set_tag("llmops.model_version", route.version.ref)
        return route

    async def _registry_prompt(self, ref: str, variables: dict, ctx: RequestContext):
        try:
            prompt = await self.router.prompt(ref)
        except Exception as error:
            raise from_exception(error, param="prompt") from None
        ctx.headers["x-llmops-prompt-version"] = prompt.ref
        if ctx.trace is not None:
            ctx.trace.set_tag("llmops.prompt_version", prompt.ref)
        try:
            return prompt, prompt.render(variables)
        except Exception as error:
            raise from_exception(error, param="variables") from None

    def _sampling(self, request: Any, defaults: dict, engine: Any, prompt_len: int, n: int,
                  logprobs: Optional[int]) -> list[SamplingParams]:
        def pick(name: str):
            value = getattr(request, name, None)
            return value if value is not None else defaults.get(name)

        explicit = getattr(request, "max_completion_tokens", None) or request.max_tokens
        max_tokens = explicit or defaults.get("max_tokens") or self.limits.default_max_tokens
        if max_tokens > self.limits.max_tokens:
            raise GatewayError(400, f"max_tokens={max_tokens} exceeds this gateway's limit of "
                               f"{self.limits.max_tokens}", param="max_tokens")
        room = engine.max_context - prompt_len
        if room <= 0:
            raise GatewayError(400, f"This model's maximum context length is {engine.max_context} tokens; "
                               f"the prompt has {prompt_len}", param="messages", code="context_length_exceeded")
        if explicit and explicit > room:
            raise GatewayError(400, f"This model's maximum context length is {engine.max_context} tokens; you "
                               f"requested {prompt_len + explicit} ({prompt_len} in the prompt, {explicit} to "
                               "generate)", param="max_tokens", code="context_length_exceeded")
        temperature = pick("temperature")
        if temperature is None and getattr(engine, "samples_by_default", False):
            temperature = 1.0
        seed = pick("seed")
        return [SamplingParams(
            max_tokens=min(max_tokens, room), temperature=temperature, top_p=pick("top_p"), top_k=pick("top_k"),
            repetition_penalty=pick("repetition_penalty"), seed=None if seed is None else seed + i, logprobs=logprobs,
            ignore_eos=bool(getattr(request, "ignore_eos", False)),
        ) for i in range(n)]

    def _check_n(self, n: int) -> None:
        if n > self.limits.max_n:
            raise GatewayError(400, f"n={n} exceeds this gateway's limit of {self.limits.max_n}", param="n")

    async def prepare_chat(self, request: ChatCompletionRequest, ctx: RequestContext) -> Prepared:
        """Validate, resolve the model, render the registry prompt and tokenize."""
        _log_unknown_fields(request, ctx)
        _reject_unsupported(request)
        self._check_n(request.n or 1)
        if request.variables is not None and request.prompt is None:
            raise GatewayError(400, "variables need a registry prompt: add \"prompt\": \"NAME@ALIAS\"", param="variables")
        if not request.messages and request.prompt is None:
            raise GatewayError(400, "'messages' is a required property", param="messages",
                               code="missing_required_parameter")
        route = await self._resolve(request.model, ctx)
        start = time.time_ns()
        messages = [{"role": m.role, "content": m.text()} for m in request.messages or []]
        defaults: dict = {}
        if request.prompt is not None:
            prompt, rendered = await self._registry_prompt(request.prompt, request.variables or {}, ctx)
            rendered = [{"role": "user", "content": rendered}] if isinstance(rendered, str) else rendered
            messages = [dict(m) for m in rendered] + messages
            defaults = {k: v for k, v in prompt.model_config.items() if k in _PROMPT_DEFAULTS}
        try:
            prompt_ids = await asyncio.to_thread(route.engine.encode_chat, messages)
        except Exception as error:
            raise from_exception(error, param="messages") from None
        if ctx.trace is not None:
            ctx.trace.add_span("render", start, time.time_ns(), prompt_tokens=len(prompt_ids),
                               prompt=request.prompt)
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        params = self._sampling(request, defaults, route.engine, len(prompt_ids), request.n or 1, logprobs)
        stop = request.stop_list() or _as_list(defaults.get("stop"))
        return Prepared(route, [prompt_ids], params, stop, [""], trace_inputs={"messages": messages},
                        stream=bool(request.stream))

    async def prepare_completion(self, request: CompletionRequest, ctx: RequestContext) -> Prepared:
        """Validate, resolve, render (`variables` given: `prompt` is a registry ref) and tokenize."""
        _log_unknown_fields(request, ctx)
        _reject_unsupported(request)
        self._check_n(request.n or 1)
        if request.best_of not in (None, request.n):
            raise GatewayError(400, "best_of other than n is not supported", param="best_of")
        route = await self._resolve(request.model, ctx)
        start = time.time_ns()
        engine, defaults = route.engine, {}
        if request.variables is not None:
            if not isinstance(request.prompt, str):
                raise GatewayError(400, "with variables, prompt must be a registry prompt ref", param="prompt")
            prompt, rendered = await self._registry_prompt(request.prompt, request.variables, ctx)
            if not isinstance(rendered, str):
                raise GatewayError(400, f"{prompt.ref} is a chat prompt; use /v1/chat/completions", param="prompt")
            texts: list = [rendered]
            defaults = {k: v for k, v in prompt.model_config.items() if k in _PROMPT_DEFAULTS}
        elif isinstance(request.prompt, str):
            texts = [request.prompt]
        elif request.prompt and all(isinstance(p, str) for p in request.prompt):
            texts = list(request.prompt)
        elif request.prompt and all(isinstance(p, int) for p in request.prompt):
            texts = [list(request.prompt)]
        elif request.prompt and all(isinstance(p, list) for p in request.prompt):
            texts = [list(p) for p in request.prompt]
        else:
            raise GatewayError(400, "prompt must be a non-empty string, list of strings or token ids", param="prompt")
        prompts = [t if isinstance(t, list) else engine.encode_text(t) for t in texts]
        vocab = len(getattr(engine, "tokenizer", ())) or None
        if vocab and any(not 0 <= i < vocab for p in prompts for i in p):
            raise GatewayError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not all(prompts):
            raise GatewayError(400, "prompt is empty", param="prompt")
        if ctx.trace is not None:
            ctx.trace.add_span("render", start, time.time_ns(), prompt_tokens=sum(map(len, prompts)),
                               prompt=request.prompt if request.variables is not None else None)
        longest = max(map(len, prompts))
        params = self._sampling(request, defaults, engine, longest, request.n or 1, request.logprobs)
        echo = [engine.decode(p) if request.echo else "" for p in prompts]
        stop = request.stop_list() or _as_list(defaults.get("stop"))
        inputs = {"prompt": [t if isinstance(t, str) else engine.decode(t) for t in texts]}
        return Prepared(route, prompts, params, stop, echo, trace_inputs=inputs, stream=bool(request.stream))

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
        start_ns = time.time_ns()

        ttft_metric, itl_metric = self.metrics.ttft.labels(*ctx.labels), self.metrics.itl.labels(*ctx.labels)
        # Text is assembled token by token only when someone needs it early (a stream, or stop strings
        # to find); otherwise the ids are decoded once at the end, which saves the event loop (and the
        # GIL it shares with the engine) a full decode per token.
        incremental = prepared.stream or bool(prepared.stop)
        token_ids = ctx.token_ids

        async def run(index: int, prompt_ids: list[int], params: SamplingParams) -> None:
            assembler = TextAssembler(engine.decode, prepared.stop)
            request = GenerationRequest(f"{ctx.request_id}-{index}", prompt_ids, params, route.adapter,
                                        stream=incremental)
            last = None
            finish = "abort"
            events = engine.generate(request)
            try:
                async for event in events:
                    # Latencies come from the engine's stamps: tokens may arrive in one batch at the end.
                    now = event.time_ns or time.time_ns()
                    if ctx.first_token_ns is None:
                        ctx.first_token_ns = now
                        ttft_metric.observe((now - ctx.arrival_ns) / 1e9)
                    elif last is not None:
                        itl_metric.observe((now - last) / 1e9)
                    last = now
                    ctx.completion_tokens += 1
                    if token_ids is not None:
                        token_ids.setdefault(index, []).append(event.token_id)
                    if event.finish_reason == "error":
                        raise GatewayError(500, "the engine failed while generating (see the gateway log)")
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
                    ctx.finish_reasons[item[0]] = item[3]
                    self.metrics.request_success.labels(*ctx.labels, item[3]).inc()
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if ctx.trace is not None:
                ctx.trace.add_span("generate", start_ns, time.time_ns(), adapter=route.adapter,
                                   completion_tokens=ctx.completion_tokens, time_to_first_token_ms=ctx.ttft_ms)

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


def _as_list(stop: Any) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def new_request_id(prefix: str = "") -> str:
    """A fresh OpenAI-style id (`chatcmpl-…`, `cmpl-…`).

    From `random`, not `uuid4`: ids need not be secret, and `os.urandom` is a system call that drops
    the GIL, which the engine thread then holds for up to a switch interval (5 ms) under load.
    """
    token = f"{random.getrandbits(128):032x}"
    return f"{prefix}-{token}" if prefix else token
