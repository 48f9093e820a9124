"""`llmops validate`: every problem at once, with file, line, key path and a did-you-mean."""

from pathlib import Path

from typer.testing import CliRunner

from llmops.cli import app

GOOD = """\
name: demo
items: [{q: "2+2", a: "4"}]
prompt: {template: "{{ q }}"}
scorers:
  - {type: exact_match, expected: "{{ a }}"}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_valid_file_is_ok(tmp_path):
    path = write(tmp_path / "evals", "demo.yaml", GOOD)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and f"ok: {path} (suite)" in result.stdout


def test_unknown_key_and_bad_value_reported_together(tmp_path):
    bad = GOOD.replace("name: demo", "name: demo\nrepeat: 3\nconcurrency: 0")
    path = write(tmp_path / "evals", "bad.yaml", bad)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert f"error: {path}:2: repeat: unknown key (did you mean repeats?)" in lines
    assert any(line.startswith(f"error: {path}:3: concurrency:") for line in lines)


def test_malformed_yaml_and_unknown_kind(tmp_path):
    broken = write(tmp_path / "evals", "broken.yaml", "name: [demo\n")
    unknown = write(tmp_path, "thing.yaml", "kind: finetun\n")
    result = CliRunner().invoke(app, ["validate", str(broken), str(unknown)])
    assert result.exit_code == 1
    assert f"error: {broken}: malformed YAML at line 2, column 1" in result.stderr
    assert "unknown config kind 'finetun' (did you mean finetune?)" in result.stderr
