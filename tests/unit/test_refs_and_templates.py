"""Reference grammar and strict template rendering (no store needed)."""

import pytest

from llmops.errors import PromptRenderError, RegistryError
from llmops.registry.prompts import check_template, render_template, template_variables
from llmops.registry.refs import Ref, parse_ref


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tiny", Ref("tiny")),
        ("tiny@production", Ref("tiny", alias="production")),
        ("tiny/3", Ref("tiny", version=3)),
        ("models:/capitals@candidate", Ref("capitals", alias="candidate")),
        ("prompts:/qa/2", Ref("qa", version=2)),
    ],
)
def test_parse_ref(text, expected):
    assert parse_ref(text) == expected
    assert parse_ref(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "tiny/0", "tiny/x", "bad name", "tiny@", "tiny@latest", "tiny@v2", "@a"])
def test_invalid_refs(text):
    with pytest.raises(RegistryError):
        parse_ref(text)


def test_text_template_renders_strictly():
    assert render_template("Q: {{question}} A:", {"question": "Why"}) == "Q: Why A:"
    with pytest.raises(PromptRenderError) as info:
        render_template("Q: {{question}} {{context}}", {"question": "Why", "extra": 1})
    assert info.value.missing == ["context"] and info.value.unknown == ["extra"]
    assert "missing variable(s) context" in str(info.value) and "unknown variable(s) extra" in str(info.value)


def test_chat_template_variables_and_render():
    template = [{"role": "system", "content": "You answer in {{ lang }}."}, {"role": "user", "content": "{{ q }}"}]
    assert template_variables(template) == ["lang", "q"]
    assert render_template(template, {"lang": "French", "q": "Hi"}) == [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hi"},
    ]


def test_loops_do_not_count_loop_variables():
    assert template_variables("{% for x in items %}{{ x }}{% endfor %}") == ["items"]


@pytest.mark.parametrize(
    "template, message",
    [
        ("", "empty"),
        ("{{ unclosed", "syntax error at line 1"),
        ([{"role": "robot", "content": "x"}], "unknown role"),
        ([{"role": "user"}], "exactly the keys"),
        (42, "non-empty string"),
    ],
)
def test_invalid_templates(template, message):
    with pytest.raises(RegistryError, match=message):
        check_template(template)
