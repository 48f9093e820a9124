"""`llmops quickstart`: the whole lifecycle on the embedded tiny model, offline, in a few minutes.

Steps: build and register the tiny base, register the prompt, fine-tune a LoRA adapter on the capital
cities, evaluate base and adapter, promote through the gate, serve it behind the OpenAI-compatible
gateway and call it with the official `openai` client while it captures the traffic, then check token
drift of that captured traffic against the training data. Everything lands in one working directory (store, artifacts, reports);
running again there adds new versions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

__all__ = ["QuickstartSummary", "run_quickstart"]

PROMPT_NAME = "capitals-qa"
PROMPT_TEMPLATE = "What is the capital of {{ country }}?"
MODEL_NAME = "quickstart"
DEMO_COUNTRIES = ("France", "Japan", "Kenya", "Peru")
OFF_TASK = ("Tell me a joke about databases.", "Translate 'good morning' into French, please.")


@dataclass
class QuickstartSummary:
    """What the quickstart produced, printed at the end."""

    workdir: Path
    base: str = ""
    prompt: str = ""
    candidate: str = ""
    score_before: Optional[float] = None
    score_after: Optional[float] = None
    verdict: str = ""
    promoted: bool = False
    answers: list[tuple[str, str]] = field(default_factory=list)
    drift: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Path] = field(default_factory=dict)
    store: str = ""
    """The registry in use (`MLFLOW_TRACKING_URI`, else the SQLite file in `workdir`), for the summary."""
    ui: str = ""
    """The command that browses that store in MLflow's UI."""


def _package_data(name: str) -> Path:
    return Path(__file__).resolve().parent / "data" / name


def _write_configs(workdir: Path) -> tuple[Path, Path]:
    """The quickstart's fine-tune config and eval suite, written where the user can read and edit them."""
    data = str(_package_data("capitals.jsonl"))
    finetune = {
        "model": {"base": "tiny"},
        "adapter": {"r": 16, "alpha": 32, "target_modules": "all-linear"},
        "data": {"train": data, "prompt": f"{PROMPT_NAME}@production", "completion_field": "capital",
                 "loss_on": "completion", "max_seq_len": 64, "packing": True},
        "training": {"epochs": 24, "lr": 5.0e-3, "schedule": "cosine", "warmup_steps": 10, "batch_size": 8, "seed": 0},
        "register": {"name": MODEL_NAME, "alias": "candidate"},
    }
    suite = {
        "name": "quickstart", "version": 1, "dataset": data, "id_field": "country",
        "prompt": f"{PROMPT_NAME}@production", "model": f"{MODEL_NAME}@candidate",
        "params": {"max_tokens": 8, "temperature": 0},
        "scorers": [{"name": "correct", "type": "exact_match", "expected": "{{ capital }}"}, {"type": "latency"}],
        "concurrency": 16,
        "gate": {"primary": "correct", "margin": 0.02, "min_items": 50, "min_score": 0.5},
    }
    paths = workdir / "configs" / "finetune" / "quickstart.yaml", workdir / "evals" / "quickstart.yaml"
    for path, content in zip(paths, (finetune, suite)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return paths


def _ensure_base(workdir: Path) -> str:
    from llmops import registry
    from llmops.errors import NotFoundError
    from llmops.tiny_model import create_tiny_model

    folder = workdir / "tiny"
    if not (folder / "config.json").is_file():
        create_tiny_model(folder, overwrite=True)
    try:
        latest = registry.resolve_model_ref("tiny")
        if latest.source == str(folder.resolve()):
            return latest.ref
    except NotFoundError:
        pass
    return registry.register_base_model("tiny", folder, description="llmops quickstart tiny base").ref


def _ensure_prompt() -> str:
    from llmops import registry
    from llmops.errors import NotFoundError

    try:
        current = registry.get_prompt(f"{PROMPT_NAME}@production")
        if current.template == PROMPT_TEMPLATE:
            return current.ref
    except NotFoundError:
        pass
    return registry.register_prompt(PROMPT_NAME, PROMPT_TEMPLATE, commit_message="quickstart", alias="production").ref


def _serve_and_ask(model: str, traffic: Path) -> list[tuple[str, str]]:
    """Start the gateway on 127.0.0.1 with traffic capture on, ask it with the openai client, stop it
    (which flushes the capture). Returns (question, answer) pairs."""
    from openai import OpenAI

    from llmops.gateway.app import create_app
    from llmops.gateway.config import GatewayConfig
    from llmops.gateway.server import BackgroundServer

    config = GatewayConfig(capture={"enabled": True, "path": str(traffic)})
    with BackgroundServer(create_app(config)) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="quickstart")
        answers = []
        for country in DEMO_COUNTRIES:  # the registry prompt, rendered by the gateway
            reply = client.chat.completions.create(
                model=model, messages=[], max_tokens=8, temperature=0,
                extra_body={"prompt": f"{PROMPT_NAME}@production", "variables": {"country": country}},
            )
            answers.append((PROMPT_TEMPLATE.replace("{{ country }}", country), reply.choices[0].message.content or ""))
        # Off-task questions too, so the traffic differs from the training data the way live traffic does.
        for question in OFF_TASK:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0)
            answers.append((question, reply.choices[0].message.content or ""))
    return answers


def _traffic_drift(model: str, traffic: Path) -> dict[str, Any]:
    """Token drift of the captured traffic of `model` against the fine-tune's training data."""
    from llmops.drift import token_drift
    from llmops.drift.traffic import traffic_documents

    docs = traffic_documents(model, _package_data("capitals.jsonl"), since="1h", capture_root=traffic,
                             prompt=f"{PROMPT_NAME}@production")
    result = token_drift(docs.reference, docs.current, vocab_size=len(docs.tokenizer), permutations=200, backend="cpu")
    return {"requests": docs.records, "js_divergence_bits": round(result.js_divergence, 4),
            "p_value": result.js_p_value, "drift": result.drift}


def run_quickstart(workdir: str | Path, step: Callable[[str], Any]) -> QuickstartSummary:
    """Run every step in `workdir` (created if needed). `step(title)` returns a context manager
    that shows progress for one step."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)  # the embedded store (mlflow.db, mlartifacts/) lives in the working directory
    from llmops.registry.store import describe_store, ui_command

    summary = QuickstartSummary(workdir, store=describe_store(), ui=ui_command())
    finetune_config, suite_path = _write_configs(workdir)

    with step("tiny base model"):
        summary.base = _ensure_base(workdir)
    with step("prompt"):
        summary.prompt = _ensure_prompt()
    with step("fine-tune (LoRA)"):
        from llmops.finetune.job import run_finetune

        result = run_finetune(finetune_config)
        summary.candidate = result.version or ""
    with step("evaluate base and adapter"):
        from llmops.evaluation.report import write_results
        from llmops.evaluation.runner import load_suite, run_suite

        suite = load_suite(suite_path)
        before = run_suite(suite, summary.base, progress=False)
        after = run_suite(suite, summary.candidate, progress=False)
        summary.score_before = before.summaries["correct"].mean
        summary.score_after = after.summaries["correct"].mean
        summary.reports["eval"] = write_results(workdir / "reports" / "eval", after, before)["report"]
    with step("promote through the gate"):
        from llmops.evaluation.promote import promote

        version = int(summary.candidate.rsplit("/", 1)[1])
        outcome = promote(MODEL_NAME, version, "production", suite_path, out=workdir / "reports" / "promote")
        summary.verdict, summary.promoted = outcome.verdict.verdict, outcome.moved
        summary.reports["gate"] = workdir / "reports" / "promote" / "report.html"
    served = f"{MODEL_NAME}@production" if summary.promoted else summary.candidate
    with step("serve, ask and capture the traffic"):
        summary.answers = _serve_and_ask(served, workdir / "traffic")
    with step("drift check on the captured traffic"):
        summary.drift = _traffic_drift(served, workdir / "traffic")
    return summary
