"""Evaluation throughput through the gateway: llmops' runner against lm-evaluation-harness.

    python benchmarks/eval_throughput.py [--concurrency 8] [--items 100] [--rounds 3] [--no-finetune]
                                         [--lm-eval-python /path/to/venv/bin/python] [--workdir DIR]

What it does, in a temporary working folder (its own MLflow store, eval cache and HF caches):

1. Builds the tiny model, registers it as base `tiny`, and (unless `--no-finetune`) fine-tunes the
   quickstart LoRA adapter (`configs/finetune/quickstart.yaml`, 10-40 s) so that the answers are
   real capitals; the model evaluated is then `quickstart/1`, else `tiny/1`.
2. Starts ONE gateway, `llmops serve --host 127.0.0.1 --port <free> tracing.enabled=false
   engine.num_threads=1 models=[MODEL]`, with OMP_NUM_THREADS=1, and warms it up with one untimed
   pass of the suite.
3. Per round (the order alternates between rounds; the best round of each side is reported):
   - llmops: `run_suite(suite, MODEL, gateway=URL, use_cache=False)` with `concurrency=C`, the
     capitals suite of `evals/quickstart.yaml` on the first `--items` rows. Timed: the run
     (`EvalResult.seconds`: generation and scoring; imports and registry lookups excluded).
   - lm-eval: `lm_eval.simple_evaluate(model="local-chat-completions", num_concurrent=C,
     apply_chat_template=True)` on a local task YAML with the same rows, prompt
     ("What is the capital of {{country}}?"), max_gen_toks 8 and temperature 0, run in a
     subprocess of the Python that has lm-eval (`--lm-eval-python`). An untimed
     `simple_evaluate(limit=1)` first does its lazy imports (torch, transformers, datasets), so both
     sides run warm. Timed: its request phase (`LocalChatCompletion.generate_until`, wrapped with a
     timer); the whole `simple_evaluate` call is shown too (`ratio_whole_call`).
   The client process's CPU time is shown as well: on a small machine the client and the gateway
   share the cores, so a client that burns CPU per request slows the gateway down.
   Both sides' requests are counted on the gateway's `/metrics` (`llmops:requests_total` of the chat
   endpoint, status 200, and the prompt/generation token counters), so both really send `--items`
   requests with the same prompts.
4. The cached rerun: `run_suite(..., use_cache=True)` twice; the first fills the cache, the second
   is timed and must send no request.

Ends with `ratio=<llmops items/s / lm-eval items/s> target=1 cached_rerun_s=<s> ...` (cached_rerun_s:
the whole run_suite() call, registry lookup included). Without lm-eval in
the chosen Python it prints a `skip:` line for the baseline, llmops' numbers and `ratio=nan`.
lm-eval needs its `[api]` extra: `pip install "lm-eval[api]"` (put it in a separate virtualenv if it
would replace your torch or huggingface_hub).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(REPO))

CHAT_ENDPOINT = "/v1/chat/completions"
CHAT_METRIC_ENDPOINT = "chat.completions"  # the `endpoint` label of llmops:requests_total
TASK_NAME = "capitals_local"

# Runs in the lm-eval Python. An untimed simple_evaluate(limit=1) first does lm-eval's lazy imports
# (torch, transformers, datasets...) and fills the datasets cache, as llmops' warm process has them;
# then one simple_evaluate is timed, and inside it the request phase. The gateway's /metrics text is
# read just around the timed call, so the counts leave out the warm-up request.
LM_EVAL_DRIVER = r'''
import json, sys, time, urllib.request
args = json.loads(sys.argv[1])
started = time.perf_counter()
from lm_eval import simple_evaluate
from lm_eval.models.openai_completions import LocalChatCompletion
from lm_eval.tasks import TaskManager
import_s = time.perf_counter() - started

timing = {"generate_s": 0.0, "generate_cpu_s": 0.0, "requests": 0}
original = LocalChatCompletion.generate_until

def timed_generate_until(self, requests, disable_tqdm=False):
    start, cpu = time.perf_counter(), time.process_time()
    try:
        return original(self, requests, disable_tqdm=True)
    finally:
        timing["generate_s"] += time.perf_counter() - start
        timing["generate_cpu_s"] += time.process_time() - cpu
        timing["requests"] += len(requests)

LocalChatCompletion.generate_until = timed_generate_until
started = time.perf_counter()
manager = TaskManager(include_path=args["task_dir"], include_defaults=False)
index_s = time.perf_counter() - started


def evaluate(limit=None):
    return simple_evaluate(
        model="local-chat-completions",
        model_args={"base_url": args["url"], "model": args["model"], "num_concurrent": args["concurrency"],
                    "max_retries": 1, "tokenized_requests": False},
        tasks=[args["task"]], task_manager=manager, apply_chat_template=True, log_samples=True,
        bootstrap_iters=0, verbosity="WARNING", limit=limit)

def metrics():
    return urllib.request.urlopen(args["metrics"], timeout=10).read().decode()

started = time.perf_counter()
evaluate(limit=1)
warmup_s = time.perf_counter() - started
timing.update(generate_s=0.0, generate_cpu_s=0.0, requests=0)
metrics_before = metrics()
started, cpu = time.perf_counter(), time.process_time()
results = evaluate()
evaluate_s, evaluate_cpu_s = time.perf_counter() - started, time.process_time() - cpu
metrics_after = metrics()
samples = results["samples"][args["task"]]
print("LM_EVAL_RESULT " + json.dumps({
    "import_s": import_s, "index_s": index_s, "warmup_s": warmup_s, "evaluate_s": evaluate_s,
    "evaluate_cpu_s": evaluate_cpu_s, **timing,
    "metrics_before": metrics_before, "metrics_after": metrics_after,
    "exact_match": results["results"][args["task"]]["exact_match,first_line"],
    "answers": {s["doc"]["country"]: s["resps"][0][0] for s in samples},
}))
'''


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, both sides (default 8)")
    parser.add_argument("--items", type=int, default=100, help="suite rows used (default: all 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side; the best is reported")
    parser.add_argument("--no-finetune", action="store_true", help="evaluate the random tiny/1 (faster set-up)")
    parser.add_argument("--lm-eval-python", default=os.environ.get("LM_EVAL_PYTHON", sys.executable),
                        help="Python of a virtualenv with lm-eval[api] (default: $LM_EVAL_PYTHON, else this one)")
    parser.add_argument("--workdir", type=Path, help="working folder (default: a temporary one, deleted)")
    return parser.parse_args()


# --- set-up ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_workdir(workdir: Path) -> None:
    """Keep every store inside `workdir`: MLflow, the eval cache, the HF caches."""
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["LLMOPS_CACHE_DIR"] = str(workdir / "cache")
    os.environ["HF_HOME"] = str(workdir / "hf")
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false")


def build_model(workdir: Path, finetune: bool) -> str:
    """The tiny base registered as `tiny`, plus the quickstart adapter when `finetune`; returns the ref."""
    from llmops import registry
    from llmops.tiny_model import create_tiny_model

    base = registry.register_base_model("tiny", create_tiny_model(workdir / "tiny", overwrite=True))
    if not finetune:
        return base.ref
    from llmops.finetune.job import run_finetune

    started = time.perf_counter()
    result = run_finetune(REPO / "configs" / "finetune" / "quickstart.yaml")
    print(f"fine-tuned {result.version} in {time.perf_counter() - started:.0f} s (final loss {result.final_loss:.3f})")
    return result.version


def write_data(workdir: Path, items: int, model: str, concurrency: int) -> tuple[Path, Path, list[dict]]:
    """The first `items` capitals as JSONL, the llmops suite on it, and the lm-eval task on it."""
    import yaml

    from llmops.tiny_model import capitals_path

    rows = [json.loads(line) for line in capitals_path().read_text().splitlines() if line.strip()][:items]
    data = workdir / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    suite = yaml.safe_load((REPO / "evals" / "quickstart.yaml").read_text())
    suite.update(dataset=str(data), model=model, concurrency=concurrency)
    suite_path = workdir / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite, sort_keys=False))

    task_dir = workdir / "lm_eval_tasks"
    task_dir.mkdir(exist_ok=True)
    task = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},  # absolute: lm-eval resolves against the cwd
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "What is the capital of {{country}}?",
        "doc_to_target": "{{capital}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": suite["params"]["max_tokens"],
                              "do_sample": False, "temperature": 0},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
        # lm-eval passes `until` on as `stop` but does not cut the reply itself.
        "filter_list": [{"name": "first_line", "filter": [
            {"function": "regex", "regex_pattern": r"^\s*([^\n.]+)"}, {"function": "take_first"}]}],
        "metadata": {"version": 1.0},
    }
    (task_dir / f"{TASK_NAME}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return suite_path, task_dir, rows


# --- the gateway -------------------------------------------------------------------------------

def start_gateway(workdir: Path, port: int, model: str) -> subprocess.Popen:
    """`llmops serve` in `workdir` (its registry), torch on one thread, no tracing."""
    command = [sys.executable, "-c", "from llmops.cli import main; main()", "serve",
               "--host", "127.0.0.1", "--port", str(port),
               "tracing.enabled=false", "engine.num_threads=1", f"models=[{model}]"]
    return subprocess.Popen(command, cwd=workdir, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "gateway.log", "w"))


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode} (see gateway.log)")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/health not ready after {timeout:.0f} s")


def stop_gateway(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def gateway_counts(url: str) -> dict[str, float]:
    """Chat requests answered 200, prompt and generated tokens, from `/metrics`."""
    import httpx

    return parse_counts(httpx.get(f"{url}/metrics", timeout=10).text)


def parse_counts(metrics_text: str) -> dict[str, float]:
    counts = {"requests": 0.0, "prompt_tokens": 0.0, "generation_tokens": 0.0}
    for line in metrics_text.splitlines():
        match = re.match(r"llmops:(\w+)_total(?:\{(.*)\})? ([0-9.e+-]+)$", line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "requests" and f'endpoint="{CHAT_METRIC_ENDPOINT}"' in labels and 'status="200"' in labels:
            counts["requests"] += value
        elif name in ("prompt_tokens", "generation_tokens"):
            counts[name] += value
    return counts


def counted(url: str, run):
    """Run `run()` and return (its result, what the gateway counted meanwhile)."""
    before = gateway_counts(url)
    result = run()
    after = gateway_counts(url)
    return result, difference(before, after)


def difference(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(after[k] - before[k]) for k in after}


# --- the two sides -----------------------------------------------------------------------------

def run_llmops(suite_path: Path, model: str, url: str, use_cache: bool) -> dict:
    from llmops.evaluation.runner import load_suite, run_suite

    suite = load_suite(suite_path)
    started, cpu = time.perf_counter(), time.process_time()
    result = run_suite(suite, model, gateway=url, use_cache=use_cache, progress=False)
    return {"run_s": result.seconds, "call_s": time.perf_counter() - started, "call_cpu_s": time.process_time() - cpu,
            "generated": result.generated,
            "cached": result.cached, "exact_match": result.summaries["correct"].mean,
            "answers": {item.item_id: item.answers[0] for item in result.items}}


def lm_eval_available(python: str) -> bool:
    probe = "import lm_eval, tenacity, lm_eval.models.openai_completions"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError:  # no such interpreter
        return False


def run_lm_eval(python: str, workdir: Path, task_dir: Path, url: str, model: str, concurrency: int) -> dict:
    """One lm-eval run in `python`; its result carries the gateway's counts of the timed call."""
    args = {"url": url + CHAT_ENDPOINT, "metrics": url + "/metrics", "model": model, "concurrency": concurrency,
            "task": TASK_NAME, "task_dir": str(task_dir)}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([python, "-c", LM_EVAL_DRIVER, json.dumps(args)], cwd=workdir, env=env,
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("LM_EVAL_RESULT "):
            result = json.loads(line[len("LM_EVAL_RESULT "):])
            result["counts"] = difference(parse_counts(result.pop("metrics_before")),
                                          parse_counts(result.pop("metrics_after")))
            return result
    raise RuntimeError(f"lm-eval failed (rc {done.returncode}):\n{done.stderr[-3000:]}")


def check_counts(side: str, counts: dict, items: int) -> None:
    if counts["requests"] != items:
        raise RuntimeError(f"{side}: the gateway answered {counts['requests']} chat requests, expected {items}")


# --- report ------------------------------------------------------------------------------------

def versions(python: str) -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    found = {name: version(name) for name in ("llmops", "openai", "httpx", "torch", "transformers")}
    probe = "from importlib import metadata as m; print(m.version('lm_eval'), m.version('aiohttp'))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        found["lm_eval"], found["aiohttp"] = done.stdout.split() if done.returncode == 0 else ("-", "-")
    except OSError:
        found["lm_eval"] = found["aiohttp"] = "-"
    return found


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {os.cpu_count()} CPUs, {system}, Python {platform.python_version()}"


def print_report(conditions: dict, llmops_rounds: list[dict], lm_eval_rounds: list[dict], cached: dict,
                 items: int, agree: str) -> tuple[float, float, float]:
    width = max(len(k) for k in conditions)
    for key, value in conditions.items():
        print(f"{key:<{width}}  {value}")
    print()
    print(f"{'side':<9} {'round':>5} {'timed_s':>8} {'items/s':>8} {'whole_call_s':>12} {'client_cpu_s':>12} "
          f"{'requests':>8} "
          f"{'prompt_tok':>10} {'gen_tok':>7} {'exact_match':>11}")
    best = {}
    for side, rounds in (("llmops", llmops_rounds), ("lm-eval", lm_eval_rounds)):
        for number, r in enumerate(rounds, start=1):
            print(f"{side:<9} {number:>5} {r['timed_s']:>8.3f} {items / r['timed_s']:>8.1f} {r['call_s']:>12.3f} "
                  f"{r['call_cpu_s']:>12.3f} {r['counts']['requests']:>8} {r['counts']['prompt_tokens']:>10} "
                  f"{r['counts']['generation_tokens']:>7} {r['exact_match']:>11.3f}")
        if rounds:
            best[side] = max(items / r["timed_s"] for r in rounds)
    print()
    print("timed_s: llmops = EvalResult.seconds (generation + scoring); lm-eval = generate_until (requests only).")
    print("whole_call_s: llmops = the run_suite() call; lm-eval = the simple_evaluate() call (after a warm-up call).")
    print("client_cpu_s: CPU time of the client process during whole_call_s (the gateway shares the 2 cores).")
    print(f"cached rerun (llmops, {items} items, all from the cache): {cached['call_s']:.3f} s for the run_suite() "
          f"call, {cached['run_s']:.3f} s timed, {cached['counts']['requests']} requests sent")
    if lm_eval_rounds:
        last = lm_eval_rounds[-1]
        print(f"lm-eval start-up, not counted above: imports {last['import_s']:.1f} s, TaskManager index "
              f"{last['index_s']:.2f} s, warm-up simple_evaluate(limit=1) {last['warmup_s']:.1f} s "
              "(its lazy imports: torch, transformers, datasets...)")
        print(f"lm-eval client CPU in its request phase (generate_until), last round: {last['generate_cpu_s']:.3f} s")
    print(f"answers identical between the two sides: {agree}")
    best_call = {side: max(items / r["call_s"] for r in rounds) if rounds else float("nan")
                 for side, rounds in (("llmops", llmops_rounds), ("lm-eval", lm_eval_rounds))}
    return (best.get("llmops", float("nan")), best.get("lm-eval", float("nan")),
            best_call["llmops"] / best_call["lm-eval"] if lm_eval_rounds else float("nan"))


# --- main --------------------------------------------------------------------------------------

def main() -> int:
    args = parse_args()
    temporary = None if args.workdir else tempfile.TemporaryDirectory(prefix="llmops-eval-bench-")
    workdir = (args.workdir or Path(temporary.name)).resolve()
    use_workdir(workdir)
    have_lm_eval = lm_eval_available(args.lm_eval_python)
    if not have_lm_eval:
        print(f"skip: lm-eval baseline: `import lm_eval` (with the [api] extra) fails in {args.lm_eval_python}; "
              'install `pip install "lm-eval[api]"` or pass --lm-eval-python')

    model = build_model(workdir, finetune=not args.no_finetune)
    suite_path, task_dir, rows = write_data(workdir, args.items, model, args.concurrency)
    items = len(rows)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = start_gateway(workdir, port, model)
    try:
        wait_ready(url, gateway)
        _, warm = counted(url, lambda: run_llmops(suite_path, model, url, use_cache=False))
        check_counts("warm-up", warm, items)

        llmops_rounds, lm_eval_rounds = [], []
        for number in range(args.rounds):
            sides = ["llmops", "lm-eval"] if number % 2 == 0 else ["lm-eval", "llmops"]
            for side in sides:
                if side == "llmops":
                    r, counts = counted(url, lambda: run_llmops(suite_path, model, url, use_cache=False))
                    llmops_rounds.append({**r, "timed_s": r["run_s"], "counts": counts})
                elif have_lm_eval:
                    r = run_lm_eval(args.lm_eval_python, workdir, task_dir, url, model, args.concurrency)
                    counts = r["counts"]
                    lm_eval_rounds.append({**r, "timed_s": r["generate_s"], "call_s": r["evaluate_s"],
                                           "call_cpu_s": r["evaluate_cpu_s"]})
                else:
                    continue
                check_counts(side, counts, items)

        run_llmops(suite_path, model, url, use_cache=True)  # fills the cache
        r, counts = counted(url, lambda: run_llmops(suite_path, model, url, use_cache=True))
        cached = {**r, "counts": counts}
        if counts["requests"] or r["generated"]:
            raise RuntimeError(f"the cached rerun sent {counts['requests']} requests")
    finally:
        stop_gateway(gateway)

    found = versions(args.lm_eval_python)
    conditions = {
        "suite": f"capitals (evals/quickstart.yaml), {items} items, max_tokens 8, temperature 0, exact match",
        "model": f"{model} ({'tiny base + quickstart LoRA' if not args.no_finetune else 'random tiny base'})",
        "gateway": f"one `llmops serve` on 127.0.0.1, tracing off, engine.num_threads=1, OMP_NUM_THREADS="
                   f"{os.environ['OMP_NUM_THREADS']}",
        "concurrency": f"{args.concurrency} (llmops suite concurrency; lm-eval num_concurrent)",
        "rounds": f"{args.rounds} per side, order alternating, after one untimed warm-up pass; best round used",
        "machine": machine(),
        "versions": ", ".join(f"{k} {v}" for k, v in found.items()),
        "lm-eval python": args.lm_eval_python if have_lm_eval else "- (skipped)",
    }
    agree = "-"
    if lm_eval_rounds:
        ours, theirs = llmops_rounds[-1]["answers"], lm_eval_rounds[-1]["answers"]
        same = sum(ours.get(k, "").strip() == v.strip() for k, v in theirs.items())
        agree = f"{same}/{len(theirs)}"
    ours_rate, theirs_rate, ratio_whole_call = print_report(conditions, llmops_rounds, lm_eval_rounds, cached,
                                                            items, agree)
    if temporary is not None:
        os.chdir(REPO)
        temporary.cleanup()
    ratio = ours_rate / theirs_rate if lm_eval_rounds else float("nan")
    print(f"ratio={ratio:.3f} target=1 cached_rerun_s={cached['call_s']:.3f} llmops_items_per_s={ours_rate:.1f} "
          f"lm_eval_items_per_s={theirs_rate:.1f} ratio_whole_call={ratio_whole_call:.3f} "
          f"concurrency={args.concurrency} items={items}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
