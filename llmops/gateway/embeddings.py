"""In-process embeddings: a service of their own, beside chat and text completions.

The pipeline has checked the input count and its estimated size; here the inputs are tokenized
once to count exactly (`limits.max_embedding_tokens`) and to reject token ids outside the
vocabulary, then embedded by the served base model (mean-pooled, L2-normalised hidden states).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from typing import Any, Optional

import orjson

from llmops.gateway.admission import embedding_inputs
from llmops.gateway.errors import GatewayError, from_exception
from llmops.gateway.protocol import EmbeddingResponse, UsageInfo

__all__ = ["EmbeddingService"]


class EmbeddingService:
    """`/v1/embeddings` on in-process engines.

    Args:
        limits: `LimitsConfig`.
    """

    def __init__(self, limits: Any):
        self.limits = limits

    async def embed(self, request: Any, route: Any, ctx: Any) -> bytes:
        """The JSON body of the embeddings response. Raises GatewayError for the client's mistakes."""
        engine = route.engine
        items = embedding_inputs(request)
        vocab = len(getattr(engine, "tokenizer", ())) or None
        for item in items:
            if vocab and not isinstance(item, str) and any(not 0 <= i < vocab for i in item):
                raise GatewayError(400, f"input token ids must be in [0, {vocab})", param="input")
        try:
            texts, tokens = await asyncio.to_thread(self._texts, engine, items)
        except GatewayError:
            raise
        except Exception as error:
            raise from_exception(error, param="input") from None
        if tokens > self.limits.max_embedding_tokens:
            raise GatewayError(400, f"input: {tokens} tokens exceed this gateway's limit of "
                               f"{self.limits.max_embedding_tokens}", param="input", code="limit_exceeded")
        started = time.time_ns()
        vectors, used = await engine.embed(texts)
        if request.dimensions is not None and request.dimensions != len(vectors[0]):
            raise GatewayError(400, f"dimensions: this model embeds into {len(vectors[0])} dimensions",
                               param="dimensions")
        if ctx.trace is not None:
            ctx.trace.add_span("embed", started, time.time_ns(), inputs=len(texts))
        ctx.usage(used, 0)
        data = [{"index": i, "embedding": _encode_vector(v, request.encoding_format)} for i, v in enumerate(vectors)]
        result = EmbeddingResponse(data=data, model=request.model,
                                   usage=UsageInfo(prompt_tokens=used, total_tokens=used))
        return orjson.dumps(result.model_dump())

    @staticmethod
    def _texts(engine: Any, items: list) -> tuple[list[str], int]:
        texts, tokens = [], 0
        for item in items:
            if isinstance(item, str):
                tokens += len(engine.encode_text(item))
                texts.append(item)
            else:
                tokens += len(item)
                texts.append(engine.decode(item))
        if any(not text for text in texts):
            raise GatewayError(400, "input: token ids that decode to no text", param="input")
        return texts, tokens


def _encode_vector(vector: list[float], encoding: Optional[str]) -> Any:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
