"""Fine-tune config and data: clear errors naming file/line/key, masking, the data plan, packing."""

import json
from pathlib import Path

import pytest

from llmops.errors import ConfigError
from llmops.finetune import FinetuneError
from llmops.finetune.batching import DataPlan, collate, pack_rows
from llmops.finetune.data import Example, load_split, make_formatter, read_jsonl
from llmops.finetune.schema import DataSection, FinetuneConfig, load_finetune_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "finetune" / "quickstart.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def data_file(tmp_path):
    return write(tmp_path, "train.jsonl", '{"prompt": "Hi", "completion": "Hello"}\n')


# ------------------------------------------------------------------------------------------- config


def test_quickstart_overrides_and_defaults():
    config = load_finetune_config(QUICKSTART, ["training.max_steps=5", "adapter.target_modules=[q_proj, v_proj]"])
    assert config.name == "quickstart" and config.model_name == "quickstart"
    assert config.training.max_steps == 5 and config.adapter.target_modules == ["q_proj", "v_proj"]
    assert config.data.train == (ROOT / "llmops" / "data" / "capitals.jsonl").resolve()
    assert config.register.alias == "candidate"


def test_missing_max_seq_len_names_file_line_and_key(tmp_path, data_file):
    path = write(tmp_path, "job.yaml", f"model:\n  base: tiny\ndata:\n  train: {data_file.name}\n")
    with pytest.raises(ConfigError) as error:
        load_finetune_config(path)
    assert f"{path}:3: data.max_seq_len: required key is missing" in str(error.value)


def test_unknown_key_suggests_the_right_one(tmp_path, data_file):
    path = write(tmp_path, "job.yaml",
                 f"model:\n  base: tiny\ndata:\n  train: {data_file.name}\n  max_seq_len: 32\ntraining:\n  lr: 1e-3\n  epoch: 2\n")
    with pytest.raises(ConfigError) as error:
        load_finetune_config(path)
    assert f"{path}:8: training.epoch: unknown key (did you mean training.epochs?)" in str(error.value)


def test_missing_base_folder_names_the_key(tmp_path, data_file):
    path = write(tmp_path, "job.yaml", f"model:\n  base: ./no-such-model\ndata:\n  train: {data_file.name}\n  max_seq_len: 32\n")
    with pytest.raises(ConfigError) as error:
        load_finetune_config(path)
    message = str(error.value)
    assert f"{path}:2: model.base: local model folder ./no-such-model does not exist" in message
    assert str(tmp_path / "no-such-model") in message


def test_cross_field_checks_name_user_keys(tmp_path, data_file):
    path = write(tmp_path, "job.yaml",
                 f"model: {{base: tiny}}\ndata: {{train: {data_file.name}, max_seq_len: 8, prompt: qa@prod, template: 'x'}}\n"
                 "training: {warmup_steps: 3, warmup_ratio: 0.1}\nregister: {alias: latest}\n")
    with pytest.raises(ConfigError) as error:
        load_finetune_config(path)
    text = str(error.value)
    assert "data.prompt and data.template both format rows" in text
    assert "training.warmup_steps and training.warmup_ratio are both set" in text
    assert "register.alias" in text and "reserved" in text


def test_missing_data_file_is_named(tmp_path):
    path = write(tmp_path, "job.yaml", "model: {base: tiny}\ndata: {train: nope.jsonl, max_seq_len: 8}\n")
    with pytest.raises(ConfigError, match=r"job.yaml:2: data.train: file .*nope.jsonl does not exist"):
        load_finetune_config(path)


# --------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', r"train.jsonl:2: data.train: not valid JSON"),
        ("\n\n", r"train.jsonl: data.train: the dataset is empty"),
        ("[1, 2]\n", r"train.jsonl:1: data.train: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, text, expected):
    path = write(tmp_path, "train.jsonl", text)
    with pytest.raises(FinetuneError, match=expected):
        read_jsonl(path, "data.train")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _data(path: Path, **kwargs) -> DataSection:
    return DataSection.model_validate({"train": str(path), "max_seq_len": 64, **kwargs})


def test_example_without_required_fields_names_line(tmp_path, tokenizer):
    path = write(tmp_path, "train.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{"question": "q"}\n')
    data = _data(path)
    with pytest.raises(FinetuneError, match=r"train.jsonl:2: data.train: an example needs `messages`, or `prompt` and `completion` \(the row has question\)"):
        load_split(path, "data.train", tokenizer, make_formatter(data), data)


def test_template_rows_missing_a_variable_name_line_and_variable(tmp_path, tokenizer):
    path = write(tmp_path, "train.jsonl", '{"country": "France", "capital": "Paris"}\n{"capital": "Rome"}\n')
    data = _data(path, template="What is the capital of {{ country }}?", completion_field="capital")
    with pytest.raises(FinetuneError, match=r"train.jsonl:2: data.train: template: missing variable\(s\) country"):
        load_split(path, "data.train", tokenizer, make_formatter(data), data)


def _trained_text(tokenizer, example: Example) -> list[str]:
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != -100:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current)); current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome"},
]}


@pytest.mark.parametrize("loss_on, expected", [
    ("assistant", ["Paris<|end|>", "Rome<|end|>"]),
    ("completion", ["Rome<|end|>"]),
])
def test_loss_masking_trains_assistant_turns_with_their_end_token(tmp_path, tokenizer, loss_on, expected):
    path = write(tmp_path, "train.jsonl", json.dumps(CHAT) + "\n")
    data = _data(path, loss_on=loss_on)
    example = load_split(path, "data.train", tokenizer, make_formatter(data), data).examples[0]
    assert _trained_text(tokenizer, example) == expected


def test_loss_on_all_trains_every_token(tmp_path, tokenizer):
    path = write(tmp_path, "train.jsonl", json.dumps(CHAT) + "\n")
    data = _data(path, loss_on="all")
    example = load_split(path, "data.train", tokenizer, make_formatter(data), data).examples[0]
    assert example.labels == example.input_ids


def test_templates_without_generation_marks_get_the_same_mask(tmp_path, tokenizer):
    """Chat templates without {% generation %} (Llama 3, Qwen): the prefix-rendering fallback."""
    import copy
    import re

    path = write(tmp_path, "train.jsonl", json.dumps(CHAT) + "\n")
    data = _data(path)
    marked = load_split(path, "data.train", tokenizer, make_formatter(data), data).examples[0]
    plain = copy.deepcopy(tokenizer)
    # Same rendering, no marks: swap the generation block for an always-true `if` (whitespace control kept).
    plain.chat_template = re.sub(r"({%-?\s*)generation(\s*-?%})", r"\1if true\2",
                                 re.sub(r"({%-?\s*)endgeneration(\s*-?%})", r"\1endif\2", tokenizer.chat_template))
    assert "endgeneration" not in plain.chat_template
    fallback = load_split(path, "data.train", plain, make_formatter(data), data).examples[0]
    assert fallback.input_ids == marked.input_ids
    # The fallback also trains the newline after <|end|> (it belongs to the turn's rendering).
    assert [t.rstrip("\n") for t in _trained_text(tokenizer, fallback)] == ["Paris<|end|>", "Rome<|end|>"]


def test_text_format_trains_completion_and_eos(tmp_path, tokenizer):
    path = write(tmp_path, "train.jsonl", '{"prompt": "Q: 2+2? A:", "completion": " 4"}\n')
    data = _data(path, format="text")
    example = load_split(path, "data.train", tokenizer, make_formatter(data), data).examples[0]
    assert _trained_text(tokenizer, example) == [" 4</s>"]
    assert example.input_ids[0] == tokenizer.bos_token_id


def test_long_examples_are_truncated_and_counted(tmp_path, tokenizer):
    rows = [{"prompt": "word " * n, "completion": "end"} for n in (2, 40, 80)]
    path = write(tmp_path, "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    data = _data(path, max_seq_len=32, loss_on="all")
    split = load_split(path, "data.train", tokenizer, make_formatter(data), data)
    assert split.truncated == 2 and max(e.length for e in split.examples) == 32


# ------------------------------------------------------------------------------------------ batching


def _examples(lengths):
    return [Example(list(range(1, n + 1)), [-100] + list(range(2, n + 1)), i + 1) for i, n in enumerate(lengths)]


def test_data_plan_is_the_same_for_any_split_into_processes_and_micro_batches():
    examples = _examples([5 + (i * 7) % 23 for i in range(50)])
    plan = DataPlan(examples, global_batch=8, seed=3, epochs=2)
    assert plan.total_steps == 13  # ceil(100 / 8); the last step takes the 4 left
    for step in range(plan.total_steps):
        step_plan = plan.step(step)
        one = plan.micro_batches(step_plan, rank=0, world=1, accumulation=1)
        split = [mb for rank in range(2) for mb in plan.micro_batches(step_plan, rank, world=2, accumulation=2)]
        assert sorted(one[0]) == sorted(step_plan.indices) == sorted(i for mb in split for i in mb)
    # Each epoch visits every example once, and the order depends on the seed only.
    first = [i for s in range(6) for i in plan.step(s).indices] + plan.step(6).indices[:2]
    assert sorted(first) == list(range(50))
    assert [plan.step(s).indices for s in range(3)] == [DataPlan(examples, 8, 3, 2).step(s).indices for s in range(3)]


def test_pack_rows_respects_capacity_and_keeps_every_example():
    lengths = [30, 5, 17, 9, 25, 2, 12]
    rows = pack_rows(lengths, 32)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 32 for row in rows) and len(rows) == 4


def test_collate_packs_with_restarting_positions_and_no_label_across_examples():
    examples = _examples([4, 3, 6])
    # Rows no longer than the longest example (row_capacity=0): 4 + 3 does not fit in 6.
    assert collate(examples, pad_id=0, packing=True, row_capacity=0)["input_ids"].shape == (3, 6)
    batch = collate(examples, pad_id=0, packing=True, row_capacity=8)
    assert batch["attention_mask"] is None and batch["input_ids"].shape == (2, 7)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0]  # the 6-token example + padding
    second = batch["position_ids"][1].tolist()
    assert second == [0, 1, 2, 3, 0, 1, 2]
    labels = batch["shift_labels"][1].tolist()
    # Row 2 holds the 4- and the 3-token example: the last token of each predicts nothing.
    assert labels == [2, 3, 4, -100, 2, 3, -100]
    assert batch["tokens"] == 13
    assert batch["keep"].tolist() == [0, 1, 2, 3, 4, 5]


def test_packed_rows_compute_the_same_logits_as_separate_examples(tiny_model_path):
    """No attention across packed examples: each example's logits equal its logits alone."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(0)
    examples = [Example(torch.randint(7, 1000, (n,), generator=generator).tolist(), [1] * n, i) for i, n in enumerate([9, 5, 13])]
    batch = collate(examples, pad_id=0, packing=True, row_capacity=32)
    assert batch["input_ids"].shape[0] == 1
    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers does not look for packed rows.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        offset = 0
        for example in sorted(examples, key=lambda e: -e.length):  # pack_rows places longest first
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[offset:offset + example.length], alone, atol=1e-4, rtol=1e-4)
            offset += example.length


def test_schema_documents_every_field():
    for section in FinetuneConfig.model_fields.values():
        model = section.annotation
        for name, field in getattr(model, "model_fields", {}).items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
