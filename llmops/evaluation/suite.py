"""The evaluation suite schema (YAML, validated by `llmops validate`).

    name: quickstart
    version: 1
    dataset: data/capitals.jsonl          # or `items:` inline
    prompt: capitals-qa@production        # or an inline `template:` / `messages:`
    model: quickstart@candidate
    params: {max_tokens: 12, temperature: 0}
    scorers:
      - {name: correct, type: exact_match, expected: "{{ capital }}"}
    slices: [region]
    gate: {primary: correct, margin: 0.02, min_items: 20}
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from pydantic import Field, PlainValidator, field_validator, model_validator

from llmops.config import ConfigModel, ConfigPath
from llmops.evaluation.scorers import ScorerOptions, validate_scorer_options

__all__ = ["SuiteConfig", "ScorerConfig", "GateConfig", "HardLimit", "SliceGate", "PromptSpec", "GenerationParams"]

ScorerConfig = Annotated[ScorerOptions, PlainValidator(validate_scorer_options)]
"""One scorer: `type:` picks a registered scorer class (`llmops.evaluation.scorers`), whose own option
model validates the other keys; `module:function` is a custom scorer."""


class GenerationParams(ConfigModel):
    """Generation parameters sent with every request."""

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: Optional[list[str]] = None
    seed: Optional[int] = 0


class PromptSpec(ConfigModel):
    """An inline prompt: a text template or chat messages over the row's fields."""

    template: Optional[str] = None
    messages: Optional[list[dict[str, str]]] = None

    @model_validator(mode="after")
    def _one_of(self) -> "PromptSpec":
        if (self.template is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt.template and prompt.messages")
        return self


class HardLimit(ConfigModel):
    """An absolute limit on a scorer's aggregate, checked on the candidate alone or against the baseline."""

    scorer: str
    """The scorer name."""
    min: Optional[float] = None
    """The candidate's mean must be at least this."""
    max: Optional[float] = None
    """The candidate's mean must be at most this."""
    p95_max_ratio: Optional[float] = None
    """The candidate's p95 must be at most this times the baseline's (latency, output tokens)."""

    @model_validator(mode="after")
    def _some_limit(self) -> "HardLimit":
        if self.min is None and self.max is None and self.p95_max_ratio is None:
            raise ValueError("a hard limit needs min, max or p95_max_ratio")
        return self


class SliceGate(ConfigModel):
    """Per-slice regression checks (Holm-corrected across slices)."""

    min_items: int = Field(10, ge=1)
    """Slices with fewer items are reported but not tested."""
    margin: Optional[float] = None
    """Non-inferiority margin per slice (default: the gate's margin)."""
    test_missing: bool = False
    """Also test the items that lack a slice field as a slice of their own (default: only report them)."""


class GateConfig(ConfigModel):
    """How a candidate is compared with the baseline (the current holder of the target alias)."""

    primary: str
    """The scorer whose per-item differences decide."""
    margin: float = Field(0.02, ge=0)
    """Non-inferiority margin: the candidate may be at most this much worse on the primary scorer."""
    alpha: float = Field(0.05, gt=0, lt=0.5)
    """Error rate of each one-sided decision (per side): 0.05 gives a 90% two-sided interval whose lower
    bound decides `pass` and whose upper bound decides `fail`, each wrong at most 5% of the time."""
    min_items: int = Field(20, ge=1)
    """With fewer paired items the verdict is `investigate`."""
    min_score: Optional[float] = None
    """Absolute floor for the candidate's primary mean (applies with or without a baseline)."""
    seed: int = 0
    """Seed of the item orders the betting bound averages over (non-binary scores), for repeatable verdicts."""
    slices: Optional[SliceGate] = None
    hard: list[HardLimit] = []


class SuiteConfig(ConfigModel):
    """An evaluation suite: data, prompt, generation parameters, scorers and the promotion gate."""

    name: str
    """Suite name (used in reports, caches and MLflow)."""
    version: Union[int, str] = 1
    """Bump on any change of data, prompt or scorers; part of every cache key."""
    description: str = ""
    dataset: Optional[ConfigPath] = None
    """A JSONL file, one item per line (relative to this file)."""
    items: Optional[list[dict[str, Any]]] = None
    """Inline items instead of a dataset file."""
    id_field: Optional[str] = None
    """Row field holding a stable item id (default: a hash of the row)."""
    prompt: Union[str, PromptSpec]
    """A registry prompt ref (NAME@ALIAS) or an inline template; variables come from the row."""
    model: Optional[str] = None
    """Default model ref when `--model` is not given."""
    params: GenerationParams = GenerationParams()
    scorers: list[ScorerConfig] = Field(min_length=1)
    slices: list[str] = []
    """Row fields to group results by (per-slice means; per-slice gate checks)."""
    repeats: int = Field(1, ge=1)
    """Generations per item (use with temperature > 0); scores are averaged per item."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""
    gate: Optional[GateConfig] = None

    @field_validator("scorers")
    @classmethod
    def _unique_names(cls, scorers: list[ScorerOptions]) -> list[ScorerOptions]:
        keys = [s.key for s in scorers]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"scorer names must be unique; repeated: {', '.join(duplicates)} (set `name:`)")
        return scorers

    @model_validator(mode="after")
    def _check(self) -> "SuiteConfig":
        if (self.dataset is None) == (self.items is None):
            raise ValueError("give exactly one of dataset (a JSONL file) and items (inline)")
        if self.gate is not None:
            keys = {s.key for s in self.scorers}
            for name in [self.gate.primary, *(h.scorer for h in self.gate.hard)]:
                if name not in keys:
                    import difflib

                    close = difflib.get_close_matches(name, sorted(keys), n=1)
                    hint = f" (did you mean {close[0]}?)" if close else f" (scorers: {', '.join(sorted(keys))})"
                    raise ValueError(f"gate names scorer {name!r}, which the suite does not define{hint}")
        return self
