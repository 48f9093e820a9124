"""Registry prompts in requests: `prompt` (a ref) + `variables`, rendered by the gateway.

Rendering happens in the pipeline, before either backend sees the request: the in-process engines
tokenize the rendered messages, and a fleet receives them rendered (`prompt` and `variables`
removed). The prompt's model config fills sampling fields the client left unset.
"""

from __future__ import annotations

from typing import Any

from llmops.gateway.errors import GatewayError, from_exception

__all__ = ["render_registry_prompt", "PROMPT_DEFAULTS"]

PROMPT_DEFAULTS = ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty", "seed", "stop")


async def render_registry_prompt(resolver: Any, request: Any, body: dict, endpoint: str, ctx: Any) -> dict:
    """Render the request's registry prompt into `request` and `body`; return the prompt's defaults.

    Raises:
        GatewayError: 400 (malformed ref, missing or unknown variables, wrong prompt kind), 404 (unknown).
    """
    ref = request.prompt
    if endpoint == "chat.completions" and ref is None:
        raise GatewayError(400, "variables need a registry prompt: add \"prompt\": \"NAME@ALIAS\"", param="variables")
    if not isinstance(ref, str):
        raise GatewayError(400, "with variables, prompt must be a registry prompt ref (NAME@ALIAS)", param="prompt")
    prompt = await resolver.prompt(ref)
    ctx.prompt_ref, ctx.prompt_version = ref, prompt.ref
    ctx.headers["x-llmops-prompt-version"] = prompt.ref
    try:
        rendered = prompt.render(request.variables or {})
    except Exception as error:  # a template that fails on these values is the caller's 400
        failure = from_exception(error, param="variables")
        if failure.status >= 500:
            failure = GatewayError(400, f"{prompt.ref}: the variables could not be rendered: {error}",
                                   param="variables", code="invalid_prompt_variables")
        raise failure from None
    body.pop("variables", None)
    request.variables = None
    if endpoint == "chat.completions":
        from llmops.gateway.protocol import ChatMessage

        messages = [{"role": "user", "content": rendered}] if isinstance(rendered, str) else list(rendered)
        messages += body.get("messages") or []
        body.pop("prompt", None)
        body["messages"] = messages
        request.prompt = None
        request.messages = [ChatMessage.model_validate(m) for m in messages]
    else:
        if not isinstance(rendered, str):
            raise GatewayError(400, f"{prompt.ref} is a chat prompt; use /v1/chat/completions", param="prompt")
        body["prompt"] = request.prompt = rendered
    defaults = {k: v for k, v in (prompt.model_config or {}).items() if k in PROMPT_DEFAULTS and v is not None}
    for name, value in defaults.items():
        if name != "max_tokens" and name in type(request).__pydantic_fields__ and request.declared(name) is None:
            setattr(request, name, value)
            body[name] = value
    if ctx.trace is not None:
        ctx.trace.set_tag("llmops.prompt_version", prompt.ref)
    return defaults
