"""The registry: the join of llmops. Models (bases and adapters) and prompts, on MLflow.

This package is the only place in llmops that talks to MLflow's registry. Everything else uses
the thin API below.
"""

from llmops.registry.aliases import AliasConflictError
from llmops.registry.events import AliasEvent
from llmops.registry.models import (
    ModelVersion,
    RegisteredModelSummary,
    alias_history,
    resolve_model_ref,
    search_models,
    set_model_alias,
    tag_model_version,
)
from llmops.registry.prompts import (
    Prompt,
    diff_prompts,
    get_prompt,
    prompt_alias_history,
    register_prompt,
    render_prompt,
    search_prompts,
    set_prompt_alias,
    to_langchain,
)
from llmops.registry.refs import Ref, parse_ref
from llmops.registry.registration import register_adapter, register_base_model

__all__ = [
    "AliasConflictError",
    "AliasEvent",
    "ModelVersion",
    "Prompt",
    "Ref",
    "RegisteredModelSummary",
    "alias_history",
    "diff_prompts",
    "get_prompt",
    "parse_ref",
    "prompt_alias_history",
    "register_adapter",
    "register_base_model",
    "register_prompt",
    "render_prompt",
    "resolve_model_ref",
    "search_models",
    "search_prompts",
    "set_model_alias",
    "set_prompt_alias",
    "tag_model_version",
    "to_langchain",
]
