"""`import llmops` and `llmops --help` stay light: heavy and GPU-only packages load at the leaves."""

import json
import subprocess
import sys

HEAVY = ["torch", "mlflow", "vllm", "transformers", "peft", "cupy", "triton", "fastapi", "numpy"]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_llmops_loads_no_heavy_package():
    loaded = _modules_after("import llmops, llmops.registry, llmops.config")
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)


def test_cli_help_loads_no_heavy_package():
    code = "import sys\nfrom llmops.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    loaded = _modules_after(code)
    assert not {m.split(".")[0] for m in loaded} & {"torch", "mlflow", "vllm", "transformers", "cupy"}
