"""Raw measurements, not quality scores: latency in seconds and output tokens (gate them with hard limits)."""

from __future__ import annotations

from typing import Optional

from llmops.evaluation.scorers.base import Sample, Scorer
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["Latency", "OutputTokens"]


@register_scorer("latency")
class Latency(Scorer):
    """Seconds from request to complete answer (the original timing, also on a cache hit)."""

    quality = False

    async def score(self, sample: Sample) -> Optional[float]:
        return sample.latency_s


@register_scorer("output_tokens")
class OutputTokens(Scorer):
    """Tokens in the answer, as the server counted them."""

    quality = False

    async def score(self, sample: Sample) -> Optional[float]:
        return float(sample.output_tokens)
