"""The tiny base model: deterministic bytes, a working tokenizer and chat template, a loadable model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmops.errors import LlmopsError
from llmops.tiny_model import create_tiny_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return create_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny)


def test_writes_the_hugging_face_layout(tiny):
    names = set(os.listdir(tiny))
    assert {"config.json", "generation_config.json", "model.safetensors", *TOKENIZER_FILES} <= names


def test_same_seed_is_byte_identical_whatever_the_global_rng(tiny, tmp_path):
    torch.manual_seed(1234)
    torch.rand(7)  # move the caller's RNG somewhere else: the build must not depend on it
    state = torch.get_rng_state()
    again = create_tiny_model(tmp_path / "again", seed=0)
    assert torch.equal(torch.get_rng_state(), state), "the build must leave the caller's RNG alone"
    assert _files(again) == _files(tiny)


def test_other_seed_changes_weights_not_tokenizer(tiny, tmp_path):
    other = create_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()
    for name in TOKENIZER_FILES:
        assert (other / name).read_bytes() == (tiny / name).read_bytes()


@pytest.mark.slow  # two fresh interpreters importing torch + transformers: ~10 s on 2 idle cores
def test_builds_in_separate_processes_are_byte_identical(tiny, tmp_path):
    # Fresh interpreters with different thread counts catch nondeterminism from hash seeds or from the
    # Rayon / OpenMP thread pools that an in-process rebuild would not see.
    script = textwrap.dedent(
        """
        import sys
        from llmops.tiny_model import create_tiny_model
        create_tiny_model(sys.argv[1], seed=0)
        """
    )
    procs = []
    for i, threads in enumerate(("1", "3")):
        env = {
            **os.environ,
            "RAYON_NUM_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "PYTHONHASHSEED": str(i + 1),
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        out = tmp_path / f"proc{i}"
        cmd = [sys.executable, "-c", script, str(out)]
        procs.append((out, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)))
    for out, proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        assert _files(out) == _files(tiny)


def test_tokenizer_round_trips_text(tokenizer):
    for text in [
        "The capital of France is Paris.",
        "  leading spaces, tabs\tand\nnewlines\n",
        '{"country": "Iceland", "capital": "Reykjavik", "n": 12345}',
        "Unicode: São Paulo, Zürich, Kraków, 東京 🙂",
    ]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer("Paris")["input_ids"][0] == tokenizer.bos_token_id


def test_special_tokens_and_generation_config(tiny, tokenizer):
    from transformers import GenerationConfig

    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    ids = tokenizer.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"])
    assert tokenizer.unk_token_id not in ids and len(set(ids)) == 4
    for token in ("<|user|>", "<|end|>"):  # each special token stays one token inside text
        ids = tokenizer(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert ids[1] == tokenizer.convert_tokens_to_ids(token)
    gen = GenerationConfig.from_pretrained(tiny)
    assert gen.eos_token_id == [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    assert gen.pad_token_id == tokenizer.pad_token_id
    assert gen.bos_token_id == tokenizer.bos_token_id


CHAT = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris"},
    {"role": "user", "content": "And of Peru?"},
    {"role": "assistant", "content": "Lima"},
]


def test_chat_template_renders_as_specified(tokenizer):
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == (
        "<s><|system|>\nAnswer with one word.<|end|>\n"
        "<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\nParis<|end|>\n"
        "<|user|>\nAnd of Peru?<|end|>\n"
        "<|assistant|>\nLima<|end|>\n"
    )
    assert tokenizer.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True) == (
        "<s><|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n"
    )
    with pytest.raises(Exception, match="unsupported chat role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_assistant_mask_covers_exactly_the_answers_and_end_of_turn(tokenizer):
    enc = tokenizer.apply_chat_template(CHAT, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(mask) == len(ids)
    assert ids.count(tokenizer.bos_token_id) == 1
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    expected_spans = [tokenizer(a + "<|end|>", add_special_tokens=False)["input_ids"] for a in ("Paris", "Lima")]
    spans, current = [], []
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    assert spans == expected_spans
    assert all(span[-1] == end for span in spans)


def test_model_loads_and_generates(tiny, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.vocab_size == len(tokenizer)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    prompt = tokenizer.apply_chat_template(
        CHAT[1:2], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 5)


def test_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(LlmopsError, match="already exists and is not empty; pass --force"):
        create_tiny_model(target)
    assert (target / "keep.txt").read_text() == "user data"
    create_tiny_model(target, overwrite=True)
    assert not (target / "keep.txt").exists()
    assert (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "no staging directory may be left behind"


def test_an_empty_existing_directory_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert create_tiny_model(tmp_path / "empty") == (tmp_path / "empty").resolve()
