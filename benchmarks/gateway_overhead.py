"""Gateway overhead: a fixed-latency upstream called directly, through llmops, and through LiteLLM.

    python benchmarks/gateway_overhead.py [--litellm /work/litellmvenv/bin/litellm] [--latency-ms 20]
        [--chunks 20] [--seconds 6] [--concurrency 1 16 64] [--rounds 3] [--gateway-from DIR ...]

The upstream (`_fake_upstream.py`) answers after a fixed latency, or streams `--chunks` canned tokens
over that time. Each server runs one worker; load generator and servers share this machine's cores.
For each target and concurrency it reports p50 / p99 latency, the p50 and p99 added over the direct
call, throughput, and the server's CPU time per request (utime + stime of its process, from
/proc/PID/stat), for non-streaming requests and for streams. The lowest concurrency's cells, where
the CPU per request is read, run `--rounds` times with the targets interleaved; the summary keeps each
target's medians. llmops runs with API-key auth and
Prometheus metrics on, capture and tracing off: every request goes through the whole pipeline
(auth, strict JSON, validation, scope, limits, rate-limit reservation, resolution, metrics). The
last line is `ratio=<llmops throughput / LiteLLM throughput at the highest concurrency> target=10 ...`
with `share_of_direct=<llmops throughput / direct upstream throughput at the highest concurrency>`
(goal >= 0.95) among its pairs, and the upstream's own CPU per answer (`upstream_cpu_ms_*`, the
"direct" rows' CPU column): what serving the same bytes costs a bare server on this machine.

Absolute CPU figures drift with the machine's load (the bare upstream's own CPU per stream moves by
30 % over a day on a shared VM); compare within one run. `--gateway-from DIR` adds the gateway of
another source tree as a target, e.g. the commit before a change:

    git worktree add /tmp/before HEAD~1 && python benchmarks/gateway_overhead.py --gateway-from /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY = "sk-llmops-benchmark"
LITELLM_KEY = "sk-litellm-benchmark-0123456789abcdef0123456789abcdef"  # a master key: auth on both sides
CLK_TCK = os.sysconf("SC_CLK_TCK")

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120.0, headers: dict | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not become ready in {timeout:.0f} s")


async def load(url: str, model: str, concurrency: int, seconds: float, stream: bool, max_requests: int,
               headers: dict) -> tuple[list[float], float, int]:
    """Closed-loop load: `concurrency` workers send requests back to back until time or count runs out.
    Returns (latencies in s, wall seconds, errors)."""
    import aiohttp

    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello"}],
                       "max_tokens": 20, "stream": stream}).encode()
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"content-type": "application/json", **headers},
                                     timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            nonlocal sent, errors
            while sent < max_requests and time.perf_counter() < stop_at:
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=body) as response:
                        async for _ in response.content.iter_any():
                            pass
                        ok = response.status == 200
                except Exception:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return latencies, wall, errors


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_gateway(work: Path, env: dict, up_url: str, tree: str | None) -> tuple[subprocess.Popen, int]:
    """`llmops serve` in front of the upstream, from this checkout or from the source tree `tree`
    (an older commit's `git worktree`, to compare against in the same run). Returns (process, port)."""
    from llmops.gateway.auth import hash_key

    port = free_port()
    config = work / f"gateway-{port}.yaml"
    config.write_text(
        f"kind: gateway\nport: {port}\nmodels: [fake@production]\n"
        f"engine: {{kind: upstream, upstream: {{urls: ['{up_url}']}}}}\n"
        f"tracing: {{enabled: false}}\n"
        f"limits: {{max_tokens: 64, default_max_tokens: 20}}\n"
        f"auth: {{enabled: true, keys: [{{id: bench, sha256: {hash_key(KEY)}}}]}}\n")
    if tree is not None:
        env = {**env, "PYTHONPATH": str(Path(tree).resolve())}
    process = subprocess.Popen([sys.executable, "-m", "llmops", "serve", "--config", str(config)],
                               env=env, cwd=work, stderr=subprocess.DEVNULL)
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--litellm", default=shutil.which("litellm") or "/work/litellmvenv/bin/litellm")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=6.0, help="most seconds per measurement")
    parser.add_argument("--max-requests", type=int, default=3000, help="most requests per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=3,
                        help="measurements of each lowest-concurrency cell (the CPU per request), median kept")
    parser.add_argument("--gateway-from", action="append", default=[], metavar="DIR",
                        help="also run the gateway of the llmops source tree DIR (e.g. `git worktree add DIR REV`) "
                             "as target llmops@<DIR's name>, to compare revisions in one run")
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    work = Path(tempfile.mkdtemp(prefix="llmops-overhead-"))
    processes: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    try:
        up_port = free_port()
        upstream = subprocess.Popen([sys.executable, str(HERE / "_fake_upstream.py"), str(up_port),
                                     str(args.latency_ms), str(args.chunks)], env=env)
        processes.append(upstream)
        up_url = f"http://127.0.0.1:{up_port}"
        wait_ready(up_url + "/health", upstream)

        # llmops: a registry holding `fake@production` (a base model served upstream as `fake/1`).
        subprocess.run([sys.executable, "-c", "from llmops import registry\n"
                        "registry.register_base_model('fake', 'org/fake-model')\n"
                        "registry.set_model_alias('fake', 'production', 1)"], env=env, check=True, cwd=work,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gateways = []  # (target name, process, port)
        for name, tree in [("llmops", None)] + [(f"llmops@{Path(t).name}", t) for t in args.gateway_from]:
            process, port = start_gateway(work, env, up_url, tree)
            processes.append(process)
            gateways.append((name, process, port))

        lite_port = free_port()
        lite_cfg = work / "litellm.yaml"
        lite_cfg.write_text(
            "model_list:\n"
            "  - model_name: fake\n"
            f"    litellm_params: {{model: openai/fake, api_base: '{up_url}/v1', api_key: x}}\n"
            "litellm_settings: {telemetry: false, drop_params: true}\n"
            f"general_settings: {{master_key: {LITELLM_KEY}}}\n")
        lite_env = {**env, "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true"}
        lite_env.pop("DATABASE_URL", None)
        lite_proc = None
        if Path(args.litellm).exists():
            lite_proc = subprocess.Popen([args.litellm, "--config", str(lite_cfg), "--port", str(lite_port),
                                          "--host", "127.0.0.1", "--num_workers", "1"], env=lite_env, cwd=work,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            processes.append(lite_proc)
        for _, process, port in gateways:
            wait_ready(f"http://127.0.0.1:{port}/health", process)
        if lite_proc is not None:
            wait_ready(f"http://127.0.0.1:{lite_port}/health/liveliness", lite_proc, timeout=180)

        targets = [("direct", f"{up_url}/v1/chat/completions", "fake/1", upstream, {})]
        targets += [(name, f"http://127.0.0.1:{port}/v1/chat/completions", "fake@production", process,
                     {"authorization": f"Bearer {KEY}"}) for name, process, port in gateways]
        if lite_proc is not None:
            targets.append(("litellm", f"http://127.0.0.1:{lite_port}/v1/chat/completions", "fake", lite_proc,
                            {"authorization": f"Bearer {LITELLM_KEY}"}))
        versions = _versions(args.litellm)
        print(f"# gateway overhead: fake upstream {args.latency_ms:g} ms, {args.chunks}-chunk streams, "
              f"one worker per server, load generator on the same host")
        print(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python "
              f"{platform.python_version()}; {versions}")
        low = min(args.concurrency)
        print(f"# each cell: up to {args.seconds:g} s or {args.max_requests} requests, after 30 warm-up requests; "
              f"concurrency {low}: {args.rounds} rounds, targets interleaved, medians in the summary")
        width = max(8, *(len(name) for name, *_ in targets))
        print(f"{'target':{width}} {'mode':6} {'conc':>4} {'n':>5} {'err':>3} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'+p50 ms':>8} {'+p99 ms':>8} {'req/s':>8} {'cpu ms/req':>10}")
        results: dict = {}
        for stream in (False, True):
            mode = "stream" if stream else "json"
            for concurrency in args.concurrency:
                rounds: dict = {name: [] for name, *_ in targets}
                # The CPU-per-request cells (lowest concurrency) are measured `--rounds` times, the targets
                # interleaved, and the median kept: a shared VM's neighbours move one cell by 20 %.
                for _ in range(args.rounds if concurrency == low else 1):
                    for name, url, model, process, headers in targets:
                        asyncio.run(load(url, model, min(concurrency, 8), 30, stream, 30, headers))  # warm-up
                        cpu0 = cpu_seconds(process.pid)
                        latencies, wall, errors = asyncio.run(load(url, model, concurrency, args.seconds, stream,
                                                                   args.max_requests, headers))
                        cpu = cpu_seconds(process.pid) - cpu0
                        n = len(latencies)
                        row = {"p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
                               "rps": n / wall if wall else 0.0, "cpu": cpu / max(1, n + errors) * 1000, "n": n,
                               "errors": errors}
                        rounds[name].append(row)
                        base = rounds["direct"][-1]
                        print(f"{name:{width}} {mode:6} {concurrency:>4} {n:>5} {errors:>3} {row['p50']:8.2f} "
                              f"{row['p99']:8.2f} {row['p50'] - base['p50']:8.2f} {row['p99'] - base['p99']:8.2f} "
                              f"{row['rps']:8.1f} {row['cpu']:10.2f}", flush=True)
                for name, rows in rounds.items():
                    results[(name, mode, concurrency)] = {key: statistics.median(r[key] for r in rows)
                                                          for key in rows[0]}
        top = max(args.concurrency)
        ll = results[("llmops", "json", top)]
        direct = results[("direct", "json", top)]
        summary = {
            "share_of_direct": round(ll["rps"] / direct["rps"], 3) if direct["rps"] else float("nan"),
            "share_of_direct_stream": round(results[("llmops", "stream", top)]["rps"]
                                            / max(1e-9, results[("direct", "stream", top)]["rps"]), 3),
            "llmops_cpu_ms_json": round(results[("llmops", "json", low)]["cpu"], 3),
            "llmops_cpu_ms_stream": round(results[("llmops", "stream", low)]["cpu"], 3),
            # The floor on this machine: the bare upstream's own CPU for the same answer (its 20 writes
            # on loopback), which a proxy pays again on top of reading them.
            "upstream_cpu_ms_json": round(results[("direct", "json", low)]["cpu"], 3),
            "upstream_cpu_ms_stream": round(results[("direct", "stream", low)]["cpu"], 3),
            "llmops_added_p50_ms_c1": round(results[("llmops", "json", low)]["p50"]
                                            - results[("direct", "json", low)]["p50"], 3),
        }
        for name, *_ in gateways[1:]:  # the --gateway-from trees, same conditions
            summary[f"{name}_cpu_ms_json"] = round(results[(name, "json", low)]["cpu"], 3)
            summary[f"{name}_cpu_ms_stream"] = round(results[(name, "stream", low)]["cpu"], 3)
            summary[f"{name}_share_of_direct"] = round(results[(name, "json", top)]["rps"] / direct["rps"], 3)
        if lite_proc is not None:
            lite = results[("litellm", "json", top)]
            summary.update({
                "litellm_cpu_ms_json": round(results[("litellm", "json", low)]["cpu"], 3),
                "litellm_cpu_ms_stream": round(results[("litellm", "stream", low)]["cpu"], 3),
                "litellm_added_p50_ms_c1": round(results[("litellm", "json", low)]["p50"]
                                                 - results[("direct", "json", low)]["p50"], 3),
                "cpu_ratio_json": round(results[("litellm", "json", low)]["cpu"] / max(1e-9, summary["llmops_cpu_ms_json"]), 1),
                "cpu_ratio_stream": round(results[("litellm", "stream", low)]["cpu"]
                                          / max(1e-9, summary["llmops_cpu_ms_stream"]), 1),
            })
            ratio = ll["rps"] / lite["rps"] if lite["rps"] else float("inf")
        else:
            ratio = float("nan")
            print("# LiteLLM not found (pass --litellm PATH): no ratio")
        pairs = " ".join(f"{k}={v}" for k, v in summary.items())
        print(f"ratio={ratio:.1f} target=10 concurrency={top} llmops_rps={ll['rps']:.0f} "
              f"litellm_rps={results.get(('litellm', 'json', top), {}).get('rps', float('nan')):.0f} {pairs} "
              "targets_cpu_ms_json<=1.5 targets_cpu_ms_stream<=3 targets_added_p50_ms_c1<=1 target_share_of_direct>=0.95")
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def _versions(litellm: str) -> str:
    from importlib.metadata import version

    parts = [f"llmops {version('llmops')}", f"uvicorn {version('uvicorn')}", f"aiohttp {version('aiohttp')}"]
    try:
        out = subprocess.run([str(Path(litellm).parent / "python"), "-c",
                              "from importlib.metadata import version; print(version('litellm'))"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        parts.append(f"litellm {out or '?'}")
    except Exception:
        parts.append("litellm ?")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
