"""The offline, deterministic tiny base model behind `llmops models create-tiny` and the quickstart.

`create_tiny_model(path)` builds a small Llama-architecture causal LM with random weights, a byte-level
BPE tokenizer trained on the corpus shipped in `llmops/data/tiny_corpus.txt`, a chat template and a
generation config, and saves them in Hugging Face format. Nothing is downloaded: the whole model comes
from the package and a seed, so CI, laptops and air-gapped machines all get the same bytes.

The model knows nothing (its weights are random); it is sized so that a LoRA fine-tune on 2 CPU cores
teaches it the quickstart task (the 100 capitals in `llmops/data/capitals.jsonl`) in about a minute.
Measured recipe (seeds 0, 1, 2; torch pinned to 1 thread, which is much faster than 2 on a shared
2-core box): LoRA r=16, alpha=32, dropout 0, all linear layers (q,k,v,o,gate,up,down), AdamW lr 5e-3,
linear decay with 5% warm-up, batch 16, 60 epochs (420 steps), loss on the assistant tokens only:
exact match 0% -> 100% in 10-25 s of training. Attention-only LoRA reaches just 65-83%.

Chat format (one turn per message, the assistant turn closed by `<|end|>`)::

    <s><|system|>
    You answer with one word.<|end|>
    <|user|>
    What is the capital of France?<|end|>
    <|assistant|>
    Paris<|end|>

This module imports torch, transformers and tokenizers lazily, so importing it is cheap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from llmops.errors import LlmopsError

__all__ = [
    "create_tiny_model",
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "END_OF_TURN_TOKEN",
    "corpus_path",
    "capitals_path",
]

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
END_OF_TURN_TOKEN = "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <|system|>=3, <|user|>=4, <|assistant|>=5, <|end|>=6.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS, END_OF_TURN_TOKEN)

# Every newline of the output is written as an expression ('\n'), and the layout of the template itself
# is stripped by `{%-`/`{{-`: transformers renders with trim_blocks/lstrip_blocks, so literal newlines
# next to block tags would be dropped or kept depending on where they sit.
# The assistant content *and* its `<|end|>` sit inside {% generation %} so that
# `return_assistant_tokens_mask=True` marks exactly the tokens the model must learn to produce,
# including the stop token (without it a fine-tuned model would never learn to stop).
CHAT_TEMPLATE = r"""{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|assistant|>\n' }}
        {%- generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}
        {{- '\n' }}
    {%- elif message['role'] == 'system' or message['role'] == 'user' %}
        {{- '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}
    {%- else %}
        {{- raise_exception('unsupported chat role ' ~ message['role'] ~ '; use system, user or assistant') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\n' }}
{%- endif %}
"""

# Sizes found by measuring the LoRA fine-tune in the module docstring: the build itself takes ~0.2 s
# (plus the torch/transformers imports) and the fine-tune well under a minute, and 100 facts fit.
_VOCAB_SIZE = 1024
_MODEL_KWARGS = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    # Ten times Llama's 0.02. With tied embeddings, frozen RMSNorm weights and hidden 64, std 0.02 caps
    # every logit near |h|*|e| = 8 * 0.16 = 1.3, so a LoRA (which trains neither) cannot make the next
    # token probable: the loss stalled at ~6.3 (ln 1024 = 6.9). At 0.2 the same recipe reaches 100%.
    initializer_range=0.2,
    tie_word_embeddings=True,
    attention_bias=False,
    mlp_bias=False,
    hidden_act="silu",
)


def corpus_path() -> Path:
    """Return the path of the corpus the tokenizer is trained on (shipped inside the package)."""
    return Path(__file__).resolve().parent / "data" / "tiny_corpus.txt"


def capitals_path() -> Path:
    """Return the path of the quickstart data set: 100 JSON lines `{"country": ..., "capital": ...}`."""
    return Path(__file__).resolve().parent / "data" / "capitals.jsonl"


def _train_tokenizer(vocab_size: int):
    """Train the byte-level BPE tokenizer on the shipped corpus.

    BPE training in `tokenizers` >= 0.20 breaks ties between equally frequent pairs by the pair itself,
    not by hash-map order or thread timing, so the result is the same for any `RAYON_NUM_THREADS`;
    `tests/unit/test_tiny_model.py` builds in separate processes with different thread counts to
    keep that promise checked.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 bytes up front, so any input text can be encoded (no unknown token needed).
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = corpus_path().read_text(encoding="utf-8").splitlines(keepends=True)
    tokenizer.train_from_iterator(lines, trainer)
    # Plain `tokenizer(text)` starts with <s>, like Llama tokenizers; `apply_chat_template` passes
    # add_special_tokens=False and gets its single <s> from the template.
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return tokenizer


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise LlmopsError(f"{path} exists and is not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LlmopsError(f"{path} already exists and is not empty; pass --force (overwrite=True) to replace it")


def create_tiny_model(path: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Build the tiny Llama base model, its tokenizer and chat template, and save them at `path`.

    The build is offline and deterministic: the same `seed` gives byte-identical `model.safetensors`
    and tokenizer files in any process, whatever the global torch RNG state or thread count.

    Args:
        path: Directory to write (created if missing). Holds `config.json`, `generation_config.json`,
            `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja`.
        seed: Seed of the random weight initialisation. The tokenizer does not depend on it.
        overwrite: Replace the contents of `path` if it already exists and is not empty.

    Returns:
        The resolved path of the saved model directory.

    Raises:
        LlmopsError: `path` exists and is not empty and `overwrite` is False, or `path` is a file.
    """
    path = Path(path).expanduser().resolve()
    _check_target(path, overwrite)

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(_VOCAB_SIZE),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[*ROLE_TOKENS, END_OF_TURN_TOKEN],
        model_max_length=_MODEL_KWARGS["max_position_embeddings"],
        padding_side="left",  # batched generation pads on the left; training code sets its own side
        clean_up_tokenization_spaces=False,  # keep decode(encode(text)) == text
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN_TOKEN)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **_MODEL_KWARGS,
    )
    config.dtype = torch.float32
    # fork_rng restores the caller's RNG state afterwards, and seeding inside it makes the weights
    # depend on `seed` only, not on whatever the caller drew before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.eval()
    # A chat reply ends with <|end|>; </s> also stops plain completions.
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=[end_id, eos_id],
        pad_token_id=pad_id,
        do_sample=False,
        max_new_tokens=32,
    )

    # Write into a sibling temporary directory and move it into place, so that a failed build never
    # leaves a half-written model (or destroys the old one when overwriting).
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private (0700); the model directory is meant to be shared
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise here
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if path.exists():
            _check_target(path, overwrite)  # re-check: another process may have written meanwhile
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
