"""LangChain integration: registry prompts as `ChatPromptTemplate`, the gateway as a `ChatOpenAI`.

    from llmops.integrations.langchain import chat_model, chat_prompt
    chain = chat_prompt("capitals-qa@production") | chat_model("quickstart@production")
    chain.invoke({"country": "France"})
"""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["chat_prompt", "chat_model", "DEFAULT_GATEWAY_URL"]

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8000/v1"


def chat_prompt(ref: str):
    """A `ChatPromptTemplate` for a registry prompt ref (Jinja2 variables, as in the registry)."""
    from llmops.registry import to_langchain

    return to_langchain(ref)


def chat_model(model: str, base_url: Optional[str] = None, api_key: Optional[str] = None, **kwargs: Any):
    """A `ChatOpenAI` bound to the llmops gateway, serving registry ref `model` (e.g. `name@production`).

    `base_url` defaults to `$LLMOPS_GATEWAY_URL` or `http://127.0.0.1:8000/v1`; `api_key` to
    `$LLMOPS_API_KEY` (a gateway without auth accepts any). Other keyword arguments go to `ChatOpenAI`.
    """
    from llmops.extras import require

    require("langchain_openai", "the LangChain chat model")
    from langchain_openai import ChatOpenAI

    url = (base_url or os.environ.get("LLMOPS_GATEWAY_URL") or DEFAULT_GATEWAY_URL).rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"
    key = api_key or os.environ.get("LLMOPS_API_KEY") or "unused"
    return ChatOpenAI(model=model, base_url=url, api_key=key, **kwargs)
