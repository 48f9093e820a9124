"""The README's set-up commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    setup = _bash_blocks()[:2]
    assert "llmops quickstart" in setup[0]
    assert setup[1].endswith("python -m pytest")
    assert setup[1] in (ROOT / ".ci" / "run").read_text()
