"""The GPU extras resolve to a working set on every declared Python version.

For each extra (`gpu`, `vllm`) and each Python that `requires-python` declares, pip resolves llmops'
own dependencies plus the extra (`pip install --dry-run --ignore-installed --report`), run by that
Python (pyenv's, or `python3.X` on PATH), so environment markers are evaluated for it. The chosen set
is then checked against itself: every chosen distribution's declared requirements (with the extras
that are active for it, under that Python's markers) are met by the chosen versions, and every
chosen distribution accepts that Python. All resolutions run in parallel with a private cache that
is deleted afterwards; they start when collection ends (`tests/conftest.py`), so their network waits
overlap the rest of the test run. Skipped only when PyPI cannot be reached.

pip >= 25 runs them (the `dev` extra pins it; pip 23 mis-resolved torch's `cuda-toolkit==13.0.3`),
with lazy wheel metadata (`fast-deps`): this index serves no PEP 658 metadata files, so without it
pip downloads every candidate wheel (vLLM 336 MB, torch 554 MB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = ("gpu", "vllm")
CANDIDATE_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")


def _declared_pythons() -> list[str]:
    spec = SpecifierSet(PROJECT["requires-python"])
    return [v for v in CANDIDATE_PYTHONS if spec.contains(f"{v}.0")]


def _interpreter(minor: str) -> str | None:
    found = sorted((Path.home() / ".pyenv" / "versions").glob(f"{minor}.*/bin/python"))
    return str(found[-1]) if found else shutil.which(f"python{minor}")


def _requirements(extra: str) -> list[str]:
    """llmops' dependencies plus one extra, with `llmops[...]` self-references expanded."""
    out = list(PROJECT["dependencies"])
    for line in PROJECT["optional-dependencies"][extra]:
        req = Requirement(line)
        if canonicalize_name(req.name) == "llmops":
            for inner in sorted(req.extras):
                out += _requirements(inner)[len(PROJECT["dependencies"]):]
        else:
            out.append(line)
    return out


@cache
def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=15) as response:
            return response.status == 200
    except OSError:
        return False


_PENDING: dict = {}  # (extra, minor) -> Future of pip's report or the error text
_WORK: list[Path] = []


def _selected_jobs(items: list) -> list[tuple[str, str]]:
    """The resolutions the run's selected tests need (all of them for the Python-floor test)."""
    selected = {(item.callspec.params["extra"], item.callspec.params["minor"]) for item in items
                if getattr(item, "originalname", "") == "test_extra_resolves_to_a_consistent_set"}
    everything = any(getattr(item, "originalname", "") == "test_the_python_floor_is_what_the_chosen_sets_need"
                     for item in items)
    return [(extra, minor) for extra in EXTRAS for minor in _declared_pythons() if everything or (extra, minor) in selected]


def _ready_to_resolve() -> str | None:
    """Why the resolutions cannot run here, or None."""
    if not _pypi_reachable():
        return "PyPI is unreachable: the resolution test needs the package index"
    import pip

    if Version(pip.__version__) < Version("25"):
        return f"pip {pip.__version__} is too old for this test: pip install 'pip>=25.1' (in the dev extra)"
    return None


def start_resolutions(items: list) -> None:
    """Start the selected resolutions in background threads (each a pip subprocess, mostly waiting on
    the network). `tests/conftest.py` calls this when collection ends, so they overlap the rest of the run;
    the `resolutions` fixture waits for them."""
    if _PENDING or _ready_to_resolve() is not None:
        return
    import pip

    work = Path(tempfile.mkdtemp(prefix="llmops-resolve-"))
    _WORK.append(work)
    # This pip, runnable by any Python >= 3.9 (`python <dir>/pip`), so each version's markers are its own.
    shutil.copytree(Path(pip.__file__).parent, work / "runner" / "pip")
    # What a user gets from PyPI: no machine-wide pip configuration (local wheel folders, extra indexes,
    # constraints) takes part; only the certificate bundle is kept, for HTTPS through a proxy.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_CACHE_DIR": str(work / "cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_INPUT": "1", "PIP_INDEX_URL": "https://pypi.org/simple"})
    if os.environ.get("PIP_CERT"):
        env["PIP_CERT"] = os.environ["PIP_CERT"]

    def resolve(job: tuple[str, str]):
        extra, minor = job
        python = _interpreter(minor)
        if python is None:
            return f"no Python {minor} interpreter (pyenv install {minor} or put python{minor} on PATH)"
        requirements = work / f"{extra}-{minor}.txt"
        requirements.write_text("\n".join(_requirements(extra)) + "\n")
        report = work / f"{extra}-{minor}.json"
        done = subprocess.run(
            [python, str(work / "runner" / "pip"), "install", "--dry-run", "--ignore-installed", "--quiet",
             "--use-feature=fast-deps", "--report", str(report), "-r", str(requirements)],
            capture_output=True, text=True, timeout=1800, env=env,
        )
        if done.returncode != 0:
            return f"pip could not resolve llmops[{extra}] on Python {minor}:\n{done.stderr[-3000:]}"
        return json.loads(report.read_text())

    jobs = _selected_jobs(items)
    if jobs:
        pool = ThreadPoolExecutor(len(jobs), thread_name_prefix="resolve")
        _PENDING.update({job: pool.submit(resolve, job) for job in jobs})
        pool.shutdown(wait=False)


@pytest.fixture(scope="module")
def resolutions(request):
    """{(extra, python): pip's report or the error text} for what the run selected."""
    why = _ready_to_resolve()
    if why is not None:
        pytest.skip(why)
    start_resolutions(request.session.items)  # no-op when conftest started them at collection
    results = {job: future.result() for job, future in _PENDING.items()}
    for work in _WORK:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _chosen(report: dict) -> dict[str, dict]:
    return {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}


def _active_extras(chosen: dict[str, dict], roots: list[Requirement], env: dict) -> dict[str, set[str]]:
    """For each chosen distribution, the extras some requirement of the set activates (to a fixed point)."""
    active: dict[str, set[str]] = {name: set() for name in chosen}
    pending = [(r, "") for r in roots]
    seen: set[tuple[str, str]] = set()
    while pending:
        req, extra = pending.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if name not in chosen:
            continue
        for new in req.extras | {""}:
            if (name, new) in seen:
                continue
            seen.add((name, new))
            active[name].add(new)
            pending += [(Requirement(line), new) for line in chosen[name].get("requires_dist", [])]
    return active


def _problems(report: dict, roots: list[str]) -> list[str]:
    """Requirements of the chosen set that the chosen versions do not meet."""
    chosen, env = _chosen(report), report["environment"]
    roots_parsed = [Requirement(r) for r in roots]
    problems = []
    for name, extras in _active_extras(chosen, roots_parsed, env).items():
        meta = chosen[name]
        python_ok = SpecifierSet(meta.get("requires_python") or "").contains(env["python_full_version"])
        if not python_ok:
            problems.append(f"{name} {meta['version']} requires Python {meta['requires_python']}")
        for line in meta.get("requires_dist", []):
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""}):
                continue
            problems += _unmet(req, chosen, f"{name} {meta['version']}")
    for req in roots_parsed:
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            problems += _unmet(req, chosen, "llmops")
    return problems


def _unmet(req: Requirement, chosen: dict[str, dict], who: str) -> list[str]:
    dependency = chosen.get(canonicalize_name(req.name))
    if dependency is None:
        return [f"{who} requires {req}, which was not chosen"]
    if not req.specifier.contains(dependency["version"], prereleases=True):
        return [f"{who} requires {req}, chosen {dependency['version']}"]
    return []


def _cuda_major_of_torch(torch_meta: dict, env: dict) -> int:
    for line in torch_meta.get("requires_dist", []):
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        if canonicalize_name(req.name) == "cuda-toolkit":
            return Version(next(iter(req.specifier)).version).major
        if canonicalize_name(req.name).startswith("nvidia-cuda-runtime-cu"):
            return int(canonicalize_name(req.name).rsplit("cu", 1)[1])
    raise AssertionError("the chosen torch declares no CUDA runtime: a CPU build")


@pytest.mark.parametrize("extra", EXTRAS)
@pytest.mark.parametrize("minor", _declared_pythons())
def test_extra_resolves_to_a_consistent_set(resolutions, extra, minor):
    result = resolutions[(extra, minor)]
    assert isinstance(result, dict), result
    assert result["environment"]["python_version"] == minor
    problems = _problems(result, _requirements(extra))
    assert not problems, "\n".join(problems)
    chosen = _chosen(result)
    torch = chosen["torch"]
    if extra == "gpu":
        cupy = next(name for name in chosen if name.startswith("cupy-cuda"))
        assert cupy == f"cupy-cuda{_cuda_major_of_torch(torch, result['environment'])}x", (cupy, torch["version"])
        assert "triton" in chosen
    if extra == "vllm":
        # the transformers engine and fine-tunes are tested within llmops' range (see pyproject)
        assert Version(chosen["transformers"]["version"]) in SpecifierSet(">=5.20")
        vllm_torch = next(Requirement(r) for r in chosen["vllm"]["requires_dist"] if Requirement(r).name == "torch")
        assert vllm_torch.specifier.contains(torch["version"])


def test_the_python_floor_is_what_the_chosen_sets_need(resolutions):
    """No lower floor would hold: some chosen distribution requires the declared minimum."""
    declared = SpecifierSet(PROJECT["requires-python"])
    floor = _declared_pythons()[0]
    below = f"{floor.split('.')[0]}.{int(floor.split('.')[1]) - 1}.0"
    assert not declared.contains(below)
    needing_floor = set()
    for (extra, minor), result in resolutions.items():
        assert isinstance(result, dict), result
        for name, meta in _chosen(result).items():
            if meta.get("requires_python") and not SpecifierSet(meta["requires_python"]).contains(below):
                needing_floor.add(f"{name} {meta['version']} ({meta['requires_python']})")
    assert needing_floor, f"every chosen distribution supports Python {below}: lower requires-python"

