"""Promotion: evaluate candidate and baseline on one suite, apply the gate, move the alias on `pass`.

The move is a compare-and-swap: the alias moves only if it still points at the baseline the gate
compared against (`registry.aliases.move_alias`). An evaluation takes minutes, and another promotion
may move the alias meanwhile; then nothing moves, and `promote` exits 2 naming the new holder.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from llmops.errors import LlmopsError, NotFoundError
from llmops.evaluation.gate import EXIT_CODES, GateVerdict, apply_gate
from llmops.evaluation.runner import EvalResult, load_suite, run_suite_async

__all__ = ["Promotion", "promote", "evaluate_pair"]


@dataclass
class Promotion:
    """What `promote` decided and did."""

    name: str
    version: int
    alias: str
    verdict: GateVerdict
    moved: bool
    forced: bool
    candidate: EvalResult
    baseline: Optional[EvalResult]
    run_ids: dict[str, str]
    conflict: Optional[str] = None
    """Why a passing move did not happen: the alias moved to another version during the evaluation."""

    @property
    def exit_code(self) -> int:
        """0 pass (or forced), 1 fail, 2 investigate or the alias moved meanwhile (`conflict`)."""
        if self.conflict:
            return 2
        return 0 if self.moved else EXIT_CODES[self.verdict.verdict]


async def evaluate_pair(suite, candidate_ref: str, baseline_ref: Optional[str], gateway: Optional[str],
                        gateway_config: Optional[str], use_cache: bool) -> tuple[EvalResult, Optional[EvalResult]]:
    """Run the suite on candidate and baseline through one generator (one gateway start in-process)."""
    from llmops.evaluation.generators import LazyGenerator, gateway_generator, in_process_generator

    generator = await gateway_generator(gateway) if gateway else LazyGenerator(lambda: in_process_generator(gateway_config))
    try:
        candidate = await run_suite_async(suite, generator, candidate_ref, use_cache=use_cache)
        baseline = await run_suite_async(suite, generator, baseline_ref, use_cache=use_cache) if baseline_ref else None
    finally:
        await generator.aclose()
    return candidate, baseline


def promote(
    name: str,
    version: int,
    alias: str,
    suite_path: str | Path,
    force: bool = False,
    reason: Optional[str] = None,
    gateway: Optional[str] = None,
    gateway_config: Optional[str] = None,
    out: Optional[str | Path] = None,
    use_cache: bool = True,
    log_to_mlflow: bool = True,
) -> Promotion:
    """Gate `name/version` against the current holder of `name@alias` and move the alias on `pass`.

    `force` moves it whatever the verdict, and needs a `reason`; both are recorded.

    Raises:
        LlmopsError: bad arguments, an unknown model or version, a suite without a gate block.
    """
    from llmops.registry import resolve_model_ref, set_model_alias
    from llmops.registry.aliases import AliasConflictError
    from llmops.registry.refs import check_alias

    check_alias(alias)
    if force and not reason:
        raise LlmopsError("--force needs --reason TEXT: say why the gate is overridden")
    candidate_version = resolve_model_ref(f"{name}/{version}")
    try:
        holder = resolve_model_ref(f"{name}@{alias}")
    except NotFoundError:
        holder = None
    if holder is not None and holder.version == candidate_version.version:
        raise LlmopsError(f"{name}@{alias} already points at version {version}; nothing to promote")
    suite = load_suite(suite_path)
    if suite.gate is None:
        raise LlmopsError(f"{suite_path}: the suite has no `gate:` block, so it cannot decide a promotion")
    candidate, baseline = asyncio.run(evaluate_pair(
        suite, candidate_version.ref, holder.ref if holder else None, gateway, gateway_config, use_cache))
    verdict = apply_gate(suite.gate, candidate, baseline)
    run_ids: dict[str, str] = {}
    if out is not None:
        from llmops.evaluation.report import write_results

        write_results(out, candidate, baseline, verdict.to_dict())
    if log_to_mlflow:
        from llmops.evaluation.tracking import log_eval_run

        run_ids["candidate"] = log_eval_run(candidate, role="candidate", gate=verdict.to_dict())
        if baseline is not None:
            run_ids["baseline"] = log_eval_run(baseline, role="baseline", gate=verdict.to_dict())
    moved = verdict.verdict == "pass" or force
    if moved:
        evidence: dict[str, Any] = {
            "suite": suite.name, "suite_version": str(suite.version), "suite_path": str(Path(suite_path).resolve()),
            "verdict": verdict.verdict,
            "delta": verdict.delta, "ci": [verdict.ci_low, verdict.ci_high], "margin": verdict.margin,
            "baseline": holder.ref if holder else None, "eval_runs": run_ids, "forced": force,
        }
        why = reason or f"gate {verdict.verdict} on {suite.name} v{suite.version}"
        try:
            set_model_alias(name, alias, version, reason=why, evidence=evidence,
                            expected=holder.version if holder else None)
        except AliasConflictError as error:
            return Promotion(name, int(version), alias, verdict, False, force, candidate, baseline, run_ids,
                             conflict=str(error))
    return Promotion(name, int(version), alias, verdict, moved, force, candidate, baseline, run_ids)
