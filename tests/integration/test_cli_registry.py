"""The `models`, `prompts` and `validate` commands as a user runs them, on a real store."""

import json

import pytest
from typer.testing import CliRunner

from llmops.cli import app


@pytest.fixture
def llmops(store):
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args))

    return run


@pytest.fixture
def base_folder(tmp_path):
    folder = tmp_path / "base"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def test_prompt_lifecycle(llmops):
    result = llmops("prompts", "register", "qa", "--template", "Q: {{question}} A:", "--alias", "production")
    assert result.exit_code == 0 and "registered qa/1, alias production" in result.stdout
    result = llmops("prompts", "render", "qa@production", "question=Why")
    assert result.exit_code == 0 and result.stdout == "Q: Why A:\n"
    result = llmops("prompts", "register", "qa", "--template", "Question: {{question}}", "-m", "reword")
    assert result.exit_code == 0 and "registered qa/2" in result.stdout
    result = llmops("prompts", "diff", "qa/1", "qa/2")
    assert "-Q: {{question}} A:" in result.stdout and "+Question: {{question}}" in result.stdout
    assert "production: (none) -> 1" in llmops("prompts", "history", "qa").stdout
    listing = llmops("prompts", "list").stdout
    assert "qa" in listing and "question" in listing


def test_chat_prompt_from_yaml_file_with_model_params(llmops, tmp_path):
    file = tmp_path / "chat.yaml"
    file.write_text(
        "messages:\n  - {role: system, content: Answer with one word.}\n  - {role: user, content: '{{ q }}'}\n"
        "model_config: {temperature: 0.1}\n"
    )
    assert llmops("prompts", "register", "chat", "--file", str(file), "--param", "max_tokens=8").exit_code == 0
    shown = llmops("prompts", "show", "chat").stdout
    assert "chat" in shown and "max_tokens = 8" in shown and "temperature = 0.1" in shown
    rendered = json.loads(llmops("prompts", "render", "chat/1", "q=Hi").stdout)
    assert rendered[1] == {"role": "user", "content": "Hi"}


def test_model_alias_and_history(llmops, base_folder):
    result = llmops("models", "register-base", "tiny", str(base_folder))
    assert result.exit_code == 0 and "registered tiny/1" in result.stdout
    assert llmops("models", "alias", "tiny", "staging", "1", "--reason", "test").exit_code == 0
    history = llmops("models", "history", "tiny").stdout
    assert "staging: (none) -> 1" in history and "(test)" in history
    shown = llmops("models", "show", "tiny@staging").stdout
    assert "tiny/1" in shown and "base" in shown and "staging" in shown


@pytest.mark.parametrize(
    "args, message",
    [
        (("models", "show", "nope/1"), "model 'nope' not found"),
        (("models", "show", "tiny@production"), "has no alias 'production'"),
        (("models", "alias", "tiny", "staging", "7"), "has no version 7"),
        (("models", "alias", "nope", "staging", "1"), "model 'nope' not found"),
        (("prompts", "render", "qa/1"), "missing variable(s) question"),
        (("prompts", "render", "qa/1", "question=x", "other=y"), "unknown variable(s) other"),
        (("prompts", "render", "qq/1", "question=x"), "prompt 'qq' not found"),
        (("prompts", "alias", "qa", "production", "3"), "has no version 3"),
        (("prompts", "register", "qa"), "give exactly one of --template TEXT and --file FILE"),
        (("models", "register-base", "tiny2", "./missing-folder"), "does not exist"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_changes_nothing(llmops, snapshot, base_folder, args, message):
    llmops("models", "register-base", "tiny", str(base_folder))
    llmops("prompts", "register", "qa", "--template", "Q: {{question}}")
    before = snapshot()
    result = llmops(*args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert snapshot() == before


def test_malformed_yaml_prompt_file_changes_nothing(llmops, snapshot, tmp_path):
    before = snapshot()
    bad = tmp_path / "bad.yaml"
    bad.write_text("messages: [unclosed\n")
    result = llmops("prompts", "register", "qa", "--file", str(bad))
    assert result.exit_code == 1 and "malformed YAML at line" in result.stderr
    assert snapshot() == before


def test_debug_shows_the_traceback(store):
    result = CliRunner().invoke(app, ["--debug", "models", "show", "nope"])
    assert result.exit_code == 1 and result.exception is not None
