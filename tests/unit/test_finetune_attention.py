"""Attention implementation of a fine-tune: sdpa unless flash-attn is importable; `llmops validate` says which."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmops import extras
from llmops.cli import app
from llmops.finetune import FinetuneError
from llmops.finetune.model import resolve_attention

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "finetune").glob("*.yaml"))


@pytest.fixture
def importable_flash_attn(tmp_path, monkeypatch):
    """An importable `flash_attn` package: the decision depends only on importability, not on its code."""
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    extras.has_module.cache_clear()
    yield
    extras.has_module.cache_clear()


def test_auto_is_sdpa_without_flash_attn():
    assert not extras.has_flash_attn()
    assert resolve_attention("auto", cuda=True) == ("sdpa", "auto: flash-attn is not importable")
    assert resolve_attention("sdpa", cuda=False) == ("sdpa", "as configured")


def test_auto_is_flash_attention_2_where_flash_attn_imports_on_a_gpu(importable_flash_attn):
    assert resolve_attention("auto", cuda=True) == ("flash_attention_2", "auto: flash-attn is importable")
    assert resolve_attention("auto", cuda=False)[0] == "sdpa"  # flash-attn has no CPU kernels


def test_flash_attention_by_name_without_the_package_names_the_install_command():
    with pytest.raises(FinetuneError, match=r"model.attn_implementation: flash_attention_2 needs the flash_attn package.*"
                                            r"pip install flash-attn --no-build-isolation"):
        resolve_attention("flash_attention_2", cuda=True)


def test_no_shipped_config_asks_for_flash_attention_by_name():
    import yaml

    assert SHIPPED
    for path in SHIPPED:
        model = yaml.safe_load(path.read_text())["model"]
        assert model.get("attn_implementation", "auto") in ("auto", "sdpa"), path


def test_validate_prints_the_attention_each_shipped_config_will_use():
    result = CliRunner().invoke(app, ["validate", *map(str, SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("attention: sdpa (auto: flash-attn is not importable)") == len(SHIPPED)


def test_validate_fails_a_config_that_names_flash_attention_here(tmp_path):
    text = (ROOT / "configs" / "finetune" / "quickstart.yaml").read_text()
    text = text.replace("../../llmops/data/capitals.jsonl", str(ROOT / "llmops" / "data" / "capitals.jsonl"))
    path = tmp_path / "fa.yaml"
    path.write_text("kind: finetune\n" + text.replace("model:\n", "model:\n  attn_implementation: flash_attention_2\n", 1))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"error: {path}:8: model.attn_implementation: flash_attention_2 needs the flash_attn package" in result.stderr
