"""The artifact cache under real concurrency: several processes fill one entry at once, a corrupted
download never enters the cache, and a CLI pointed at a store that cannot work prints one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmops.errors import RegistryError
from llmops.registry.artifact_cache import cache_entry, cached_artifact
from llmops.registry.digest import tree_digest

FILL = """
import sys, time
from pathlib import Path
from llmops.registry.artifact_cache import cached_artifact

source, digest, log = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

def download(folder):
    with open(log, "a") as handle:
        handle.write("download\\n")
    for file in sorted(source.iterdir()):
        time.sleep(0.2)  # slow enough that every process arrives while the first one fills
        (folder / file.name).write_bytes(file.read_bytes())

print(cached_artifact("demo", 3, digest, download))
"""


def _source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    for index in range(4):
        (folder / f"part{index}.bin").write_bytes(os.urandom(4096))
    return folder


def test_processes_filling_one_entry_download_once(tmp_path):
    source = _source(tmp_path)
    digest = tree_digest(source)
    log = tmp_path / "downloads.log"
    env = {**os.environ, "LLMOPS_CACHE_DIR": str(tmp_path / "cache")}
    workers = [subprocess.Popen([sys.executable, "-c", FILL, str(source), digest, str(log)], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    paths = {worker.communicate(timeout=120)[0].strip() for worker in workers}
    assert all(worker.returncode == 0 for worker in workers)
    entry = tmp_path / "cache" / "demo" / "3" / digest.removeprefix("sha256:")
    assert paths == {str(entry)}
    assert log.read_text().count("download") == 1
    assert tree_digest(entry) == digest
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name, f"{entry.name}.lock"]  # no partials


def test_a_download_that_does_not_match_the_digest_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOPS_CACHE_DIR", str(tmp_path / "cache"))
    source = _source(tmp_path)
    digest = tree_digest(source)

    def tampered(folder: Path) -> None:
        for file in source.iterdir():
            (folder / file.name).write_bytes(b"changed")

    with pytest.raises(RegistryError, match="the artifacts were changed after registration"):
        cached_artifact("demo", 1, digest, tampered)
    entry = cache_entry("demo", 1, digest)
    assert not entry.exists() and [p.name for p in entry.parent.iterdir()] == [f"{entry.name}.lock"]
    # The next fill with the right files succeeds.
    good = cached_artifact("demo", 1, digest, lambda folder: [
        (folder / f.name).write_bytes(f.read_bytes()) for f in source.iterdir()])
    assert good == entry and tree_digest(good) == digest


def _cli(args: list[str], uri: str, block: str = "") -> subprocess.CompletedProcess:
    code = f"import sys; {block}sys.argv = ['llmops', *sys.argv[1:]]; from llmops.cli.app import main; main()"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("uri, block, expected", [
    ("postgresql://llmops@127.0.0.1:9/llmops", "sys.modules['psycopg'] = None; ",
     "error: PostgreSQL at 127.0.0.1:9/llmops needs the database driver 'psycopg', which is not installed: "
     "run `pip install 'llmops[postgres]'`"),
    ("postgresql://llmops@127.0.0.1:9/llmops", "",
     "error: cannot reach PostgreSQL at 127.0.0.1:9/llmops ("),
    ("http://127.0.0.1:9", "",
     "error: cannot reach the MLflow tracking server at http://127.0.0.1:9 ("),
])
def test_store_failures_are_one_error_line(uri, block, expected):
    result = _cli(["models", "list"], uri, block)
    assert result.returncode == 1
    assert result.stderr.startswith(expected), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
