"""Lineage: walk a served answer back to the data, code and evidence behind it, and rebuild a version.

- `walk.walk_lineage` follows trace -> model version -> adapter -> base -> dataset (with its DVC
  pointer) -> training config -> prompt version -> fine-tune run -> evaluation evidence -> alias history.
- `reproduce.reproduce_version` retrains a version from its recorded lineage, after checking every
  digest, and registers the result tagged `llmops.reproduces`.
- `dvc` recognises DVC-tracked datasets and fetches recorded versions through DVC's Python API.

Heavy packages (mlflow, torch, dvc) are imported inside the functions that use them.
"""

from llmops.errors import LlmopsError

__all__ = ["LineageError", "TAG_REPRODUCES"]

TAG_REPRODUCES = "llmops.reproduces"
"""Model-version tag of a reproduction: the `name/VERSION` it rebuilt."""


class LineageError(LlmopsError):
    """A lineage cannot be walked or a version cannot be reproduced: missing records, changed inputs.

    The message names the version, the input (base, dataset, prompt) and both digests.
    """
