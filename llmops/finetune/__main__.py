"""`python -m llmops.finetune CONFIG [key=value ...]`: one process of a fine-tune.

This is what torchrun and `accelerate launch -m llmops.finetune CONFIG` start in every process;
`llmops finetune --num-processes N` starts it for you.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from llmops.errors import LlmopsError
    from llmops.finetune.job import main_entry

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m llmops.finetune CONFIG [key.sub=value ...]")
        return 0 if args else 2
    try:
        main_entry(args[0], args[1:])
    except LlmopsError as error:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank hits the same error; say it once
            print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
