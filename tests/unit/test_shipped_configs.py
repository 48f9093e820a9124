"""Every YAML shipped in configs/, evals/ and serving/ validates, the way `llmops validate` checks it."""

from pathlib import Path

import pytest

from llmops.config import validate_file

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for folder in ("configs", "evals", "serving") for p in (ROOT / folder).rglob("*.y*ml"))
# Files for other tools that have no llmops schema; each names the test that checks it instead.
NOT_LLMOPS = {"prometheus.yml", "prometheus.yaml", "docker-compose.yaml", "docker-compose.yml"}


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name not in NOT_LLMOPS], ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_yaml_validates(path):
    validate_file(path)
