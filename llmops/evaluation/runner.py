"""Run a suite against one model ref: render, generate (bounded concurrency, cached), score.

    result = run_suite(load_suite("evals/quickstart.yaml"), model="quickstart@candidate")
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from llmops.config import load_config
from llmops.evaluation.cache import ResponseCache, cache_key
from llmops.evaluation.generators import ChatGenerator, GenerationError, LazyGenerator
from llmops.evaluation.results import EvalResult, ItemResult, ScorerSummary, summarise
from llmops.evaluation.scorers import EvalError, Sample, Scorer, build_scorer
from llmops.evaluation.suite import PromptSpec, SuiteConfig
from llmops.jsonl import read_jsonl
from llmops.registry.digest import json_digest

__all__ = ["ItemResult", "ScorerSummary", "EvalResult", "load_suite", "load_items", "run_suite", "run_suite_async"]


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SuiteConfig:
    """Load and validate a suite file (raises ConfigError with every problem)."""
    return load_config(path, SuiteConfig, overrides)


def load_items(suite: SuiteConfig) -> list[dict[str, Any]]:
    """The suite's rows. Raises EvalError for a missing file, a bad line or an empty dataset."""
    if suite.items is not None:
        rows = list(suite.items)
    else:
        path = suite.dataset
        if not path.is_file():
            raise EvalError(f"suite {suite.name!r}: dataset file {path} not found")
        rows = [row for _, row in read_jsonl(path, "dataset", EvalError)]
    if not rows:
        raise EvalError(f"suite {suite.name!r}: the dataset has no items")
    return rows


@dataclass
class _Prepared:
    item_id: str
    item_hash: str
    messages: list[dict[str, str]]
    prompt_text: str
    prompt_hash: str
    row: dict[str, Any]


def _prepare(suite: SuiteConfig, rows: list[dict[str, Any]], scorers: list[Scorer]) -> tuple[list[_Prepared], Optional[str]]:
    """Render every prompt and check every row against every scorer before anything is generated."""
    from llmops.registry.prompts import render_template

    prompt_ref = None
    if isinstance(suite.prompt, str):
        from llmops.registry import get_prompt

        prompt = get_prompt(suite.prompt)
        template, prompt_ref = prompt.template, prompt.ref
    else:
        spec: PromptSpec = suite.prompt
        template = spec.template if spec.template is not None else spec.messages
    from llmops.registry.prompts import template_variables

    variables = template_variables(template)
    prepared, seen = [], set()
    for index, row in enumerate(rows):
        where = f"item {index + 1}"
        missing = [v for v in variables if v not in row]
        if missing:
            raise EvalError(f"{where}: the prompt needs field(s) {', '.join(missing)} (row fields: {', '.join(sorted(row))})")
        for scorer in scorers:
            try:
                scorer.check_row(row)
            except EvalError as error:
                raise EvalError(f"{where}: {error}") from None
        rendered = render_template(template, {v: row[v] for v in variables}, where=prompt_ref or "suite prompt")
        messages = [{"role": "user", "content": rendered}] if isinstance(rendered, str) else rendered
        item_hash = json_digest(row)[7:23]
        item_id = str(row[suite.id_field]) if suite.id_field and suite.id_field in row else item_hash
        if item_id in seen:
            raise EvalError(f"{where}: duplicate item id {item_id!r}")
        seen.add(item_id)
        text = json.dumps(messages, ensure_ascii=False)
        prepared.append(_Prepared(item_id, item_hash, messages, text, json_digest(messages)[7:23], row))
    return prepared, prompt_ref


def _model_identity(model: str) -> tuple[dict[str, Any], Optional[str]]:
    """What the cache keys on for a model ref: the resolved version and its digests."""
    from llmops.errors import NotFoundError
    from llmops.registry import resolve_model_ref

    try:
        version = resolve_model_ref(model)
    except NotFoundError:
        return {"ref": model, "unresolved": True}, None
    return {"ref": version.ref, "digest": version.digest, "base_digest": version.tags.get("llmops.base_digest")}, version.ref


async def run_suite_async(
    suite: SuiteConfig,
    generator: "ChatGenerator | LazyGenerator",
    model: Optional[str] = None,
    use_cache: bool = True,
    cache: Optional[ResponseCache] = None,
    progress: bool = True,
    judge_generator: Optional[ChatGenerator] = None,
) -> EvalResult:
    """Run `suite` on `model` (default: the suite's) through `generator`.

    Raises:
        EvalError: bad data or scorer set-up, found before any request is sent.
    """
    model = model or suite.model
    if not model:
        raise EvalError(f"suite {suite.name!r} names no model: pass --model REF")
    judge_source = judge_generator or generator

    async def judge(judge_model: str, prompt: str) -> str:
        generation = await judge_source.chat(judge_model, [{"role": "user", "content": prompt}], {"max_tokens": 128, "temperature": 0})
        return generation.text

    scorers = [build_scorer(config, judge) for config in suite.scorers]
    prepared, prompt_ref = _prepare(suite, load_items(suite), scorers)
    identity, model_version = _model_identity(model)
    params = suite.params.model_dump(exclude_none=True)
    cacheable = use_cache and not identity.get("unresolved")
    cache = cache or (ResponseCache() if cacheable else None)
    semaphore = asyncio.Semaphore(suite.concurrency)
    counts = {"generated": 0, "cached": 0}
    start = time.perf_counter()
    run_token = uuid.uuid4().hex[:12]  # request ids unique to this run, so its gateway traces can be found

    async def one(item: _Prepared, repeat: int) -> Sample:
        key = cache_key(model=identity, prompt=prompt_ref, messages=item.prompt_hash, params=params, repeat=repeat,
                        suite_version=str(suite.version))
        hit = cache.get(key) if cacheable else None
        if hit is None:
            request_id = f"llmops-eval-{run_token}-{item.item_hash}-{repeat}"
            async with semaphore:
                try:
                    generation = await generator.chat(model, item.messages, {**params, "seed": (params.get("seed") or 0) + repeat},
                                                      request_id=request_id)
                except GenerationError as error:
                    raise EvalError(f"generating with {model!r} failed: {error}") from None
            hit = {"text": generation.text, "latency_s": generation.latency_s, "output_tokens": generation.output_tokens,
                   "request_id": generation.request_id or request_id}
            counts["generated"] += 1
            if cacheable:
                cache.put(key, hit)
        else:
            counts["cached"] += 1
        return Sample(item.row, item.prompt_text, hit["text"], hit["latency_s"], hit["output_tokens"],
                      {"request_id": hit.get("request_id", "")})

    tasks = [(item, repeat) for item in prepared for repeat in range(suite.repeats)]
    samples = await _gather_with_progress([one(i, r) for i, r in tasks], f"{suite.name} on {model}", progress)
    items = []
    for index, item in enumerate(prepared):
        repeats = samples[index * suite.repeats:(index + 1) * suite.repeats]
        scores: dict[str, Optional[float]] = {}
        for scorer in scorers:
            values = [v for v in [await scorer.score(s) for s in repeats] if v is not None]
            scores[scorer.key] = float(np.mean(values)) if values else None
        expected = {s.key: value for s in scorers if (value := s.expected(item.row)) is not None}
        items.append(ItemResult(item.item_id, item.item_hash, item.prompt_hash, item.row, [s.answer for s in repeats],
                                scores, {k: item.row.get(k) for k in suite.slices},
                                request_ids=[s.extra["request_id"] for s in repeats], expected=expected))
    summaries = {s.key: summarise(s.key, [i.scores[s.key] for i in items], s.is_quality) for s in scorers}
    slices = {
        field_name: {
            str(value): {s.key: summarise(s.key, [i.scores[s.key] for i in items if i.slices.get(field_name) == value], s.is_quality).mean
                         for s in scorers}
            for value in sorted({i.slices.get(field_name) for i in items}, key=str)
        }
        for field_name in suite.slices
    }
    if cache is not None:
        cache.close()
    return EvalResult(suite.name, str(suite.version), model, model_version, prompt_ref, items, summaries, slices,
                      counts["generated"], counts["cached"], time.perf_counter() - start, getattr(generator, "base_url", None))


async def _gather_with_progress(coroutines: list, description: str, progress: bool) -> list:
    if not progress:
        return list(await asyncio.gather(*coroutines))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=len(coroutines))

        async def tick(coroutine):
            result = await coroutine
            bar.advance(task)
            return result

        return list(await asyncio.gather(*(tick(c) for c in coroutines)))


def run_suite(suite: SuiteConfig, model: Optional[str] = None, gateway: Optional[str] = None,
              gateway_config: Optional[str] = None, use_cache: bool = True, progress: bool = True) -> EvalResult:
    """Synchronous wrapper: through `gateway` (a URL) if given, else the gateway code in-process."""
    from llmops.evaluation.generators import gateway_generator, in_process_generator

    async def main() -> EvalResult:
        generator = await gateway_generator(gateway) if gateway else LazyGenerator(lambda: in_process_generator(gateway_config))
        try:
            return await run_suite_async(suite, generator, model, use_cache=use_cache, progress=progress)
        finally:
            await generator.aclose()

    return asyncio.run(main())
