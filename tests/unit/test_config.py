"""Config loading: overrides, every error at once with key paths and lines, did-you-mean, paths."""

from pathlib import Path
from typing import Optional

import pytest

from llmops.config import ConfigModel, ConfigPath, apply_overrides, load_config, load_yaml
from llmops.errors import ConfigError


class Training(ConfigModel):
    lr: float = 1e-4
    """Learning rate."""
    epochs: int = 1


class Data(ConfigModel):
    train: ConfigPath
    max_seq_len: int


class Example(ConfigModel):
    data: Data
    training: Training = Training()
    name: Optional[str] = None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return path


def test_valid_config_resolves_relative_paths_against_the_file(tmp_path):
    path = write(tmp_path, "data:\n  train: data/train.jsonl\n  max_seq_len: 64\n")
    config = load_config(path, Example)
    assert config.data.train == tmp_path / "data" / "train.jsonl"
    assert config.training.lr == 1e-4


def test_overrides_are_typed_and_create_missing_mappings(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\n  max_seq_len: 64\n")
    config = load_config(path, Example, ["training.lr=3e-4", "training.epochs=2", "name=run one"])
    assert config.training.lr == 3e-4 and config.training.epochs == 2 and config.name == "run one"


def test_every_error_is_reported_at_once_with_lines_and_did_you_mean(tmp_path):
    path = write(tmp_path, "data:\n  train: t.jsonl\ntraining:\n  lrr: 0.1\n  epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Example)
    errors = info.value.errors
    assert len(errors) == 3
    assert f"{path}:1: data.max_seq_len: required key is missing" in errors  # the line of `data:`
    assert f"{path}:4: training.lrr: unknown key (did you mean training.lr?)" in errors
    assert any(e.startswith(f"{path}:5: training.epochs:") and "integer" in e for e in errors)


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = write(tmp_path, "data:\n  train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+, column \d+"):
        load_yaml(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize("override", ["noequals", "=1", "a..b=1"])
def test_bad_override_syntax(override):
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, [override])


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="a is not a mapping"):
        apply_overrides({"a": 1}, ["a.b=2"])
