"""Structured-output scorers: valid JSON, and JSON that satisfies a JSON schema."""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import Field, field_validator

from llmops.evaluation.scorers.base import Sample, Scorer, ScorerOptions
from llmops.evaluation.scorers.registry import register_scorer

__all__ = ["JsonValid", "JsonSchema"]


def _parse(answer: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(answer)
    except ValueError:
        return False, None


@register_scorer("json_valid")
class JsonValid(Scorer):
    """1 when the whole answer parses as JSON, else 0."""

    async def score(self, sample: Sample) -> Optional[float]:
        return float(_parse(sample.answer)[0])


class JsonSchemaOptions(ScorerOptions):
    """Options of `json_schema` (the schema is checked when the suite is validated)."""

    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON schema (draft 2020-12) the answer must satisfy."""

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"invalid JSON schema: {error.message}") from None
        return schema


@register_scorer("json_schema")
class JsonSchema(Scorer):
    """1 when the answer is JSON that satisfies `schema`, else 0."""

    Options = JsonSchemaOptions

    async def score(self, sample: Sample) -> Optional[float]:
        import jsonschema

        ok, document = _parse(sample.answer)
        return float(ok and jsonschema.Draft202012Validator(self.options.schema_).is_valid(document))
