"""`llmops finetune` end to end on the tiny model and a real MLflow store: the quickstart learns the
task and registers one version with lineage; 2-process DDP matches 1 process; a SIGKILLed run
resumes to the same loss; bad input fails with a clear message and registers nothing; merge."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmops.cli import app

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "finetune" / "quickstart.yaml"
CAPITALS = ROOT / "llmops" / "data" / "capitals.jsonl"


@pytest.fixture
def llmops(store):
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run


@pytest.fixture
def tiny_registered(llmops, tiny_model_path):
    result = llmops("models", "register-base", "tiny", tiny_model_path)
    assert result.exit_code == 0, result.output
    return tiny_model_path


def _subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def _versions(name: str) -> list[int]:
    from llmops.registry.store import configure

    return sorted(int(v.version) for v in configure().search_model_versions(f"name='{name}'"))


def _exact_match(model, tokenizer, rows) -> float:
    """Greedy answers, stopping at <|end|>, compared exactly with the capital (as the eval suite does)."""
    import torch

    correct = 0
    for row in rows:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"What is the capital of {row['country']}?"}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        correct += answer == row["capital"]
    return correct / len(rows)


def test_quickstart_learns_the_task_and_registers_a_version_with_lineage(llmops, tiny_registered, tmp_path):
    result = llmops("finetune", QUICKSTART, f"checkpoint.dir={tmp_path / 'run'}")
    assert result.exit_code == 0, result.output
    assert "registered quickstart/1, alias candidate" in result.stdout

    shown = llmops("models", "show", "quickstart@candidate").stdout
    for tag in ("base_digest = sha256:", "dataset_digest = sha256:", "config_digest = sha256:",
                "prompt_version = inline:", "git_commit = ", "llmops_version = "):
        assert tag in shown, shown
    import re

    assert re.search(r"base:\s+tiny/1", shown) and re.search(r"kind:\s+adapter", shown), shown

    # The MLflow run: resolved config as params; loss, lr, tokens/s as metrics; config and fingerprint as artifacts.
    from llmops.registry import resolve_model_ref
    from llmops.registry.store import configure

    version = resolve_model_ref("quickstart@candidate")
    client = configure()
    run = client.get_run(version.run_id)
    assert run.data.params["data.max_seq_len"] == "64" and run.data.params["adapter.r"] == "16"
    assert {"loss", "learning_rate", "tokens_per_s"} <= set(run.data.metrics)
    assert len(client.get_metric_history(version.run_id, "loss")) == _result(tmp_path / "run")["steps"]
    artifacts = {a.path for a in client.list_artifacts(version.run_id)}
    assert {"config.yaml", "dataset.json", "adapter"} <= artifacts

    # The adapter, loaded on the base, answers far better than the base.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in CAPITALS.read_text().splitlines()][:30]
    tokenizer = AutoTokenizer.from_pretrained(tiny_registered)
    base = AutoModelForCausalLM.from_pretrained(tiny_registered).eval()
    before = _exact_match(base, tokenizer, rows)
    tuned = PeftModel.from_pretrained(base, version.local_path()).eval()
    after = _exact_match(tuned, tokenizer, rows)
    assert before <= 0.10 and after >= 0.70, (before, after)


def test_two_process_data_parallel_matches_one_process_and_registers_once(llmops, tiny_registered, tmp_path):
    steps = ["training.max_steps=6", "training.warmup_steps=0", "training.lr=1e-3"]
    ddp = subprocess.run(
        [sys.executable, "-c", "from llmops.cli import main; main()", "finetune", str(QUICKSTART), "--num-processes", "2", *steps,
         "training.batch_size=4", "register.name=ddp", f"checkpoint.dir={tmp_path / 'ddp'}"],
        env=_subprocess_env(), capture_output=True, text=True, timeout=240,
    )
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    assert ddp.stdout.count("registered ddp/1, alias candidate") == 1
    two = _result(tmp_path / "ddp")
    assert two["world_size"] == 2  # really 2 synchronised processes, not 2 independent runs

    result = llmops("finetune", QUICKSTART, *steps, "training.batch_size=8", "register.enabled=false",
                    f"checkpoint.dir={tmp_path / 'one'}")
    assert result.exit_code == 0, result.output
    one = _result(tmp_path / "one")
    # Same global batch (2 x 4 = 1 x 8), same examples per step: the curves agree to float rounding.
    assert len(one["losses"]) == len(two["losses"]) == 6
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-4, abs=1e-4)
    assert _versions("ddp") == [1]
    from llmops.registry.store import configure

    runs = configure().search_runs([configure().get_experiment_by_name("finetune-quickstart").experiment_id])
    assert len([r for r in runs if r.info.run_id == two["run_id"]]) == 1


def test_sigkilled_run_resumes_to_the_same_final_loss(llmops, tiny_registered, tmp_path):
    common = [str(QUICKSTART), "training.max_steps=40", "checkpoint.every=10", "checkpoint.keep=2", "register.enabled=false"]
    job = subprocess.Popen([sys.executable, "-m", "llmops.finetune", *common, f"checkpoint.dir={tmp_path / 'killed'}"],
                           env=_subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("step-*")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "result.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "llmops.finetune", *common, "checkpoint.resume=auto",
                              f"checkpoint.dir={tmp_path / 'killed'}"],
                             env=_subprocess_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    after = _result(tmp_path / "killed")
    assert 10 <= after["resumed_from_step"] < 40

    result = llmops("finetune", *common, f"checkpoint.dir={tmp_path / 'straight'}")
    assert result.exit_code == 0, result.output
    straight = _result(tmp_path / "straight")
    # Optimizer, scheduler, RNG and data position restored: the same numbers, up to float rounding.
    assert after["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5, abs=1e-6)
    assert after["losses"] == pytest.approx(straight["losses"][after["resumed_from_step"]:], rel=1e-5, abs=1e-6)


def test_resume_refuses_a_checkpoint_of_another_config(llmops, tiny_registered, tmp_path):
    common = [QUICKSTART, "training.max_steps=4", "checkpoint.every=2", "register.enabled=false", f"checkpoint.dir={tmp_path}"]
    assert llmops("finetune", *common).exit_code == 0
    result = llmops("finetune", *common, "checkpoint.resume=auto", "training.lr=0.1")
    assert result.exit_code == 1
    assert "checkpoint.resume" in result.output and "different config" in result.output


@pytest.mark.parametrize(
    "rows, overrides, expected",
    [
        ('{"country": "France", "capital": "Paris"}\n{"country": "Spain", "capital": \n', [],
         r"train.jsonl:2: data.train: not valid JSON"),
        ('{"country": "France"}\n', ["data.template=null"],
         r"train.jsonl:1: data.train: an example needs `messages`, or `prompt` and `completion`"),
        ("", [], r"train.jsonl: data.train: the dataset is empty"),
        ('{"country": "France", "capital": "Paris"}\n', ["model.base=tinyy"],
         r"quickstart.yaml:7: model.base: model 'tinyy' not found in the registry \(did you mean 'tiny'\?\)"),
        ('{"country": "France", "capital": "Paris"}\n', ["model.base=./missing-model"],
         r"model.base: local model folder ./missing-model does not exist"),
        ('{"country": "France", "capital": "Paris"}\n', ["<drop>  max_seq_len: 64\n"],
         r"quickstart.yaml:\d+: data.max_seq_len: required key is missing"),
        ('{"country": "France", "capital": "Paris"}\n', ["training.epoch=3"],
         r"training.epoch: unknown key \(did you mean training.epochs\?\)"),
    ],
    ids=["not-json", "missing-fields", "empty", "unknown-base", "missing-base-path", "no-max-seq-len", "unknown-key"],
)
def test_bad_input_fails_clearly_and_registers_nothing(llmops, tiny_registered, snapshot, tmp_path, rows, overrides, expected):
    import re

    config = tmp_path / "quickstart.yaml"
    text = QUICKSTART.read_text().replace("../../llmops/data/capitals.jsonl", "train.jsonl")
    for drop in [o.removeprefix("<drop>") for o in overrides if o.startswith("<drop>")]:
        assert drop in text
        text = text.replace(drop, "")
    overrides = [o for o in overrides if not o.startswith("<drop>")]
    config.write_text(text)
    (tmp_path / "train.jsonl").write_text(rows)
    before = snapshot()
    result = llmops("finetune", config, *overrides)
    assert result.exit_code == 1
    assert re.search(expected, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback
    assert snapshot() == before
    assert not (tmp_path / "runs" / "quickstart" / "adapter").exists()


def test_preview_marks_trained_tokens_and_counts_long_examples(llmops, tiny_registered, snapshot):
    before = snapshot()
    result = llmops("finetune", QUICKSTART, "--preview", "2", "data.max_seq_len=19")
    assert result.exit_code == 0, result.output
    assert "⟦Paris<|end|>⟧" in result.stdout and "⟦Berlin<|end|>⟧" in result.stdout
    assert "<|user|>\nWhat is the capital of France?<|end|>" in result.stdout
    assert "19 tokens, 3 trained" in result.stdout
    rows = [json.loads(line) for line in CAPITALS.read_text().splitlines()]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_registered)
    longer = sum(
        len(tokenizer.apply_chat_template([{"role": "user", "content": f"What is the capital of {r['country']}?"},
                                           {"role": "assistant", "content": r["capital"]}], tokenize=True, return_dict=True)["input_ids"]) > 19
        for r in rows
    )
    assert longer > 0
    assert f"{longer} of 100 examples exceed max_seq_len=19 (truncated)" in result.stdout
    assert snapshot() == before and not Path("runs").exists()


def test_registry_prompt_formats_data_and_merge_matches_the_adapter(llmops, tiny_registered, tmp_path):
    from llmops import registry

    registry.register_prompt("capitals-qa", [{"role": "user", "content": "What is the capital of {{ country }}?"}],
                             alias="production")
    result = llmops("finetune", QUICKSTART, "data.template=null", "data.prompt=capitals-qa@production",
                    "training.max_steps=8", "training.eval_every=4", f"data.eval={CAPITALS}", "register.name=capitals",
                    f"checkpoint.dir={tmp_path / 'run'}")
    assert result.exit_code == 0, result.output
    assert "registered capitals/1, alias candidate" in result.stdout
    adapter = registry.resolve_model_ref("capitals@candidate")
    assert adapter.tags["llmops.prompt_version"] == "capitals-qa/1"
    from llmops.registry.store import configure

    eval_history = configure().get_metric_history(adapter.run_id, "eval_loss")
    assert [m.step for m in eval_history] == [4, 8]
    assert float(adapter.tags["llmops.eval_loss"]) == pytest.approx(eval_history[-1].value, rel=1e-5)

    result = llmops("models", "merge", "capitals/1", tmp_path / "merged", "--register", "capitals-merged")
    assert result.exit_code == 0, result.output
    assert "registered capitals-merged/1 (merged)" in result.stdout
    merged_version = registry.resolve_model_ref("capitals-merged/1")
    assert merged_version.kind == "merged" and merged_version.tags["llmops.merged_from"] == "capitals/1"

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 4, 200, 300, 400, 6, 5]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_registered),
                                             adapter.local_path()).eval()(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(input_ids=ids).logits
    torch.testing.assert_close(merged, expected, atol=1e-4, rtol=1e-4)
    assert llmops("models", "merge", "tiny/1", tmp_path / "other").exit_code == 1
