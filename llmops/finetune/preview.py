"""`llmops finetune CONFIG --preview N`: show what the model will be trained on, without training.

Each example is printed as the model sees it (chat template applied), with the trained tokens
between `⟦` and `⟧` (and in green on a terminal), followed by token counts; a summary says how many
examples exceed `data.max_seq_len` and were truncated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from llmops.finetune.data import IGNORE_INDEX, Example

__all__ = ["preview", "render_example"]

OPEN, CLOSE = "⟦", "⟧"


def render_example(tokenizer: Any, example: Example):
    """A rich `Text` of the example with trained spans delimited and highlighted."""
    from rich.text import Text

    text = Text()
    segment: list[int] = []
    trained_segment = False

    def flush():
        if not segment:
            return
        words = tokenizer.decode(segment, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if trained_segment:
            text.append(OPEN, style="dim")
            text.append(words, style="bold green")
            text.append(CLOSE, style="dim")
        else:
            text.append(words)

    for token, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE_INDEX
        if trained != trained_segment:
            flush()
            segment, trained_segment = [], trained
        segment.append(token)
    flush()
    return text


def preview(config_path: str | Path, overrides: Iterable[str], count: int, console: Any) -> dict[str, Any]:
    """Print `count` formatted training examples with trained tokens marked, and the data summary.

    Returns:
        The summary numbers (examples, tokens, trained tokens, truncated).

    Raises:
        ConfigError, FinetuneError: invalid config, data or base model.
    """
    from llmops.finetune.job import key_location, prepare_data
    from llmops.finetune.model import load_tokenizer, resolve_base
    from llmops.finetune.schema import load_finetune_config

    config_path = Path(config_path)
    config = load_finetune_config(config_path, list(overrides))
    where = key_location(config_path, "model.base")
    base = resolve_base(config, where)
    tokenizer = load_tokenizer(base, config, where)
    data = prepare_data(config, tokenizer)
    train = data.train
    for number, example in enumerate(train.examples[:count], start=1):
        trained = example.trained_tokens
        note = f", truncated to {config.data.max_seq_len}" if example.truncated else ""
        console.rule(f"example {number} ({Path(train.path).name} line {example.line}): "
                     f"{example.length} tokens, {trained} trained{note}", style="dim")
        console.print(render_example(tokenizer, example))
    lengths = [e.length for e in train.examples]
    summary = {
        "rows": train.rows,
        "examples": len(train.examples),
        "tokens": train.tokens,
        "trained_tokens": train.trained_tokens,
        "truncated": train.truncated,
        "dropped": train.dropped,
        "max_seq_len": config.data.max_seq_len,
    }
    console.rule(style="dim")
    console.print(
        f"train: {summary['examples']} examples from {summary['rows']} rows, {summary['tokens']} tokens "
        f"(min {min(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}), "
        f"{summary['trained_tokens']} trained; format {'chat' if data.chat else 'text'}, loss_on {config.data.loss_on}, "
        f"prompt {data.formatter.prompt_version}",
        markup=False,
    )
    console.print(
        f"{train.truncated} of {train.rows} examples exceed max_seq_len={config.data.max_seq_len} (truncated)"
        + (f"; {train.dropped} dropped with no trained token left" if train.dropped else ""),
        markup=False,
    )
    if data.eval is not None:
        console.print(f"eval: {len(data.eval.examples)} examples, {data.eval.tokens} tokens, "
                      f"{data.eval.truncated} exceed max_seq_len", markup=False)
    console.print(f"trained tokens are shown between {OPEN} and {CLOSE}; nothing was trained (preview)", markup=False)
    return summary
