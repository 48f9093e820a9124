"""Compare a reproduction with the version it rebuilt: loss curve, adapter weights, primary eval score.

Tolerance. On CPU, in one process, with the same thread count and the same torch / transformers / peft
versions, a rebuild is bit-exact: same loss at every logged step, byte-identical adapter weights, same
greedy answers (the quickstart version reproduces this way; `tests/integration/test_lineage.py`
checks it). Anywhere else (another thread count, a GPU with non-deterministic atomics, other library
versions) floating-point sums run in another order and the run follows a nearby path, so a rebuild
counts as reproduced when the final loss is within `LOSS_RTOL` (relative) and the primary eval score
within `SCORE_ATOL` (absolute) of the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

__all__ = ["LOSS_RTOL", "SCORE_ATOL", "InputCheck", "ReproduceReport", "compare_runs"]

LOSS_RTOL = 0.02
"""Relative difference in final training loss accepted when the rebuild is not bit-exact."""
SCORE_ATOL = 0.05
"""Absolute difference in the primary eval score accepted when the rebuild is not bit-exact."""


@dataclass
class InputCheck:
    """One input of the rebuild, checked against its record."""

    name: str
    ref: str
    recorded: Optional[str]
    now: Optional[str]
    state: str
    how: str


@dataclass
class ReproduceReport:
    """What `llmops reproduce` did and found."""

    original: str
    reproduction: str
    out: str
    checks: list[InputCheck]
    seed: Any
    loss_original: Optional[float]
    loss_reproduced: float
    loss_steps: int = 0
    loss_curve_identical: bool = False
    loss_max_abs_diff: Optional[float] = None
    weights_identical: Optional[bool] = None
    weights_digest: Optional[str] = None
    suite: Optional[str] = None
    primary: Optional[str] = None
    score_original: Optional[float] = None
    score_reproduced: Optional[float] = None
    verdict: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def within_tolerance(self) -> bool:
        return self.verdict in ("bit-exact", "within tolerance")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "loss_rtol": LOSS_RTOL, "score_atol": SCORE_ATOL}

    def lines(self) -> list[str]:
        """The report as the CLI prints it."""
        out = [f"reproduced {self.original} as {self.reproduction} (tag llmops.reproduces={self.original})"]
        for check in self.checks:
            out.append(f"  {check.name:<11} {check.ref}  {check.recorded}  {check.state} ({check.how})")
        out.append(f"  {'seed':<11} {self.seed}")
        if self.loss_original is not None:
            delta = self.loss_reproduced - self.loss_original
            curve = (f"loss curve identical over {self.loss_steps} logged steps" if self.loss_curve_identical
                     else f"largest difference over the curve {self.loss_max_abs_diff:.3g}"
                     if self.loss_max_abs_diff is not None else "loss curves of different lengths")
            out.append(f"  {'final loss':<11} {self.loss_original:.8f} -> {self.loss_reproduced:.8f}  (Δ {delta:+.3g}; {curve})")
        if self.weights_identical is not None:
            same = "identical" if self.weights_identical else "differ"
            out.append(f"  {'weights':<11} adapter_model.safetensors {same} ({self.weights_digest})")
        if self.score_original is not None and self.score_reproduced is not None:
            delta = self.score_reproduced - self.score_original
            out.append(f"  {self.primary:<11} {self.score_original:.4f} -> {self.score_reproduced:.4f}  "
                       f"(Δ {delta:+.4f}, primary score of suite {self.suite})")
        for note in self.notes:
            out.append(f"  note: {note}")
        tolerance = f"tolerance: final loss ±{LOSS_RTOL:.0%} relative, primary score ±{SCORE_ATOL}"
        out.append(f"  {'verdict':<11} {self.verdict} ({tolerance}; bit-exact expected on CPU)")
        out.append(f"  {'run folder':<11} {self.out}")
        return out


def _weights(original: Any, out: Path) -> tuple[Optional[bool], Optional[str]]:
    import tempfile

    from llmops.lineage.runs import download_run_artifact
    from llmops.registry.digest import file_digest

    new = out / "adapter" / "adapter_model.safetensors"
    if not new.is_file() or not original.run_id:
        return None, None
    with tempfile.TemporaryDirectory(prefix="llmops-reproduce-") as folder:
        old = download_run_artifact(original.run_id, "adapter/adapter_model.safetensors", Path(folder))
        if old is None or not old.is_file():
            return None, None
        old_digest, new_digest = file_digest(old), file_digest(new)
    return old_digest == new_digest, new_digest


def _recorded_suite(original: Any) -> Optional[Path]:
    """The suite file of the newest gated alias move to `original` (promotion evidence `suite_path`)."""
    from llmops.registry import alias_history

    for event in reversed(alias_history(original.name)):
        path = (event.evidence or {}).get("suite_path")
        if event.to_version == original.version and path and Path(path).is_file():
            return Path(path)
    return None


def _scores(report: ReproduceReport, original: Any, reproduction: Any, suite_path: Optional[Path]) -> None:
    from llmops.errors import LlmopsError

    suite_path = suite_path or _recorded_suite(original)
    if suite_path is None:
        report.notes.append("no eval suite recorded for this version (no gated promotion); pass --suite FILE to compare scores")
        return
    from llmops.evaluation.runner import load_suite, run_suite
    from llmops.evaluation.tracking import log_eval_run

    try:
        suite = load_suite(suite_path)
        before = run_suite(suite, original.ref, progress=False)
        after = run_suite(suite, reproduction.ref, progress=False)
        log_eval_run(after, role="reproduction")
    except LlmopsError as error:
        report.notes.append(f"the score comparison on {suite_path} failed: {error}")
        return
    primary = suite.gate.primary if suite.gate is not None else next(iter(after.summaries))
    report.suite, report.primary = f"{suite.name} v{suite.version} ({suite_path})", primary
    report.score_original, report.score_reproduced = before.summaries[primary].mean, after.summaries[primary].mean


def compare_runs(original: Any, reproduction: Any, result: Any, checks: list[InputCheck], seed: Any, out: Path,
                 suite_path: Optional[Path]) -> ReproduceReport:
    """Compare the rebuilt version with the original and decide the verdict (see the module docstring)."""
    from llmops.lineage.runs import metric_history

    old_curve = metric_history(original.run_id, "loss") if original.run_id else []
    new_curve = metric_history(result.run_id, "loss") if result.run_id else []
    recorded_final = original.tags.get("llmops.final_loss")
    loss_original = old_curve[-1] if old_curve else float(recorded_final) if recorded_final else None
    report = ReproduceReport(original.ref, reproduction.ref, str(out), checks, seed, loss_original, result.final_loss)
    report.loss_steps = len(new_curve)
    report.loss_curve_identical = bool(old_curve) and old_curve == new_curve
    if old_curve and len(old_curve) == len(new_curve):
        report.loss_max_abs_diff = max(abs(a - b) for a, b in zip(old_curve, new_curve, strict=True))
    report.weights_identical, report.weights_digest = _weights(original, out)
    _scores(report, original, reproduction, suite_path)
    score_delta = (None if report.score_original is None or report.score_reproduced is None
                   else abs(report.score_reproduced - report.score_original))
    if report.loss_curve_identical and report.weights_identical is not False and not score_delta:
        report.verdict = "bit-exact"
    elif (loss_original is not None and math.isclose(result.final_loss, loss_original, rel_tol=LOSS_RTOL)
          and (score_delta is None or score_delta <= SCORE_ATOL)):
        report.verdict = "within tolerance"
    else:
        report.verdict = "outside tolerance"
    return report
