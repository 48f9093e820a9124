"""What tracing costs the gateway, and whether it keeps up.

    python benchmarks/tracing_overhead.py [--requests 3000] [--rate 200] [--seconds 10] [--workdir DIR]

1. Added latency, A/B in one server: `llmops serve` with `tracing.sample_ratio=0.5`, chat requests
   (max_tokens=1) at concurrency 16; traced and untraced requests (told apart by the
   `x-llmops-trace-id` header) share the same conditions, so the p50 difference is the request-path
   cost of tracing (with a bootstrap 95% interval).
2. Off against on, in two servers one after the other: this also counts the exporter thread's CPU,
   which competes with serving for the GIL, but the box's noise between runs enters too.
3. Keeping up: the traced server driven at `--rate` requests per second (16 workers) for `--seconds`;
   then the traces in the MLflow store are counted and the dropped and failed counters read from
   `/metrics`.
4. The exporter at `--rate` beside a busy engine, in one process: the real transformers engine decodes
   16 long streams while traces are submitted at `--rate` per second for `--seconds` (this box cannot
   serve 200 HTTP requests/s, so this is where the rate itself is checked): dropped, stored, and the lag
   from submit to stored.
5. The request-path cost in isolation (begin, three spans, tags, submit) against `@mlflow.trace` on a
   function with three child spans, both in this process on the same SQLite store, and the bulk
   writer's capacity (traces stored per second).

Ends with `ratio=<@mlflow.trace in-thread p50 / llmops in-thread p50> target=1 added_p50_ms=...
target_added_p50_ms=0.3 dropped=... target_dropped=0 ...`.

    python benchmarks/tracing_overhead.py --remote [--rate 100] [--seconds 20] [--server-url URL]

Remote mode: the traces go to an `mlflow server` over HTTP through the batched OTLP path
(`trace_store.RestTraceWriter`). Two servers are started here, one after the other, on a SQLite file:
MLflow's SQL store (`sqlite:///`, the baseline) and the llmops store plugin (`llmops+sqlite:///`, which
stores span batches of new traces in bulk); or only the one at `--server-url` (e.g. on PostgreSQL).
For each server:
1. The fleet gateway (`engine.kind: upstream` in front of the fixed-latency replica `_fake_upstream.py`) with
   every request traced, driven at `--rate` requests/s for `--seconds`: dropped and failed counters, and
   the traces the server then holds.
2. The exporter's capacity: 5,000 queued traces written to the server in batches (traces stored per
   second, counted on the server).
Ends with `ratio=<stored per second / 200> target=1 stored_traces_per_s=... dropped=... target_dropped=0
... baseline_mlflow_store_traces_per_s=... speedup=...` (the llmops store, or the given server).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gateway_setup import QUESTIONS, free_port, prepare_workdir, start_gateway, stop, wait_ready  # noqa: E402

TRANSPORT_ERRORS: list[str] = []  # connection-level failures of the load generator, reported at the end
BODY = {"model": "capitals@production", "max_tokens": 1, "temperature": 0}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _closed_loop(url: str, total: int, concurrency: int = 16) -> list[tuple[float, bool]]:
    import httpx

    results: list[tuple[float, bool]] = []
    counter = iter(range(total))
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            for i in counter:
                body = {**BODY, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
                started = time.perf_counter()
                try:
                    response = await client.post(url, json=body)
                except httpx.TransportError as error:  # e.g. a keep-alive connection closed under us
                    TRANSPORT_ERRORS.append(repr(error))
                    continue
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                results.append((elapsed, "x-llmops-trace-id" in response.headers))
        await asyncio.gather(*[worker() for _ in range(concurrency)])
    return results


async def _paced(url: str, rate: float, seconds: float, concurrency: int = 16) -> tuple[int, float, int]:
    """Send `rate` requests/s for `seconds` from `concurrency` workers; (sent, achieved rate, errors)."""
    import httpx

    interval = concurrency / rate
    sent = errors = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()

        async def worker(offset: int) -> None:
            nonlocal sent, errors
            next_at = start + offset * interval / concurrency
            while next_at < start + seconds:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                body = {**BODY, "messages": [{"role": "user", "content": QUESTIONS[sent % len(QUESTIONS)]}]}
                response = await client.post(url, json=body)
                sent += 1
                errors += response.status_code != 200
                next_at += interval
        await asyncio.gather(*[worker(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - start
    return sent, sent / elapsed, errors


def _bootstrap_p50_difference(a: list[float], b: list[float], rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of p50(a) - p50(b), in ms."""
    import random

    rng = random.Random(0)
    diffs = sorted((_pct(rng.choices(a, k=len(a)), 0.5) - _pct(rng.choices(b, k=len(b)), 0.5)) * 1000
                   for _ in range(rounds))
    return diffs[int(0.025 * rounds)], diffs[int(0.975 * rounds)]


def _metric(base: str, name: str) -> float:
    import httpx

    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def _exporter_beside_engine(workdir: Path, rate: float, seconds: float) -> dict:
    """Submit `rate` traces/s for `seconds` while the engine generates; the exporter shares the GIL."""
    import torch

    from llmops.gateway.engines.base import GenerationRequest, SamplingParams
    from llmops.gateway.engines.transformers import TransformersEngine
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer

    torch.set_num_threads(1)
    tracer = Tracer(writer_for("bench-beside-engine"), flush_interval=0.5)
    engine = TransformersEngine(workdir / "tiny", device="cpu")
    prompts = [engine.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]

    async def run() -> tuple[int, int]:
        stop_at = time.perf_counter() + seconds
        tokens = 0

        async def stream(i: int) -> None:
            nonlocal tokens
            while time.perf_counter() < stop_at:
                request = GenerationRequest(f"b{i}", prompts[i], SamplingParams(max_tokens=128, ignore_eos=True))
                async for _ in engine.generate(request):
                    tokens += 1
                    if time.perf_counter() >= stop_at:
                        break

        async def submit() -> int:
            sent, start = 0, time.perf_counter()
            while time.perf_counter() < stop_at:
                trace = tracer.begin("chat.completions")
                now = time.time_ns()
                for name in ("resolve", "render", "generate"):
                    trace.add_span(name, now, now + 1000)
                trace.set_tag("llmops.model_version", "capitals/1")
                trace.usage = (20, 1)
                trace.inputs, trace.outputs = {"messages": [{"role": "user", "content": "hi"}]}, ["Paris"]
                tracer.submit(trace)
                sent += 1
                await asyncio.sleep(max(0.0, start + sent / rate - time.perf_counter()))
            return sent

        results = await asyncio.gather(submit(), *[stream(i) for i in range(16)])
        return results[0], tokens

    sent, tokens = asyncio.run(run())
    submitted_at = time.perf_counter()
    stored_during = tracer.stats.written
    tracer.flush(120)
    lag = time.perf_counter() - submitted_at
    asyncio.run(engine.close())
    tracer.close()
    return {"sent": sent, "tokens": tokens, "dropped": tracer.stats.dropped, "failed": tracer.stats.failed,
            "stored": tracer.stats.written, "stored_during": stored_during, "drain_after": lag,
            "rate": sent / seconds}


def _in_process(workdir: Path, calls: int) -> dict:
    """Request-path cost of llmops' tracer vs `@mlflow.trace`, and the bulk writer's capacity."""
    import mlflow

    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer
    from llmops.registry.store import ensure_experiment

    tracer = Tracer(writer_for("bench-inprocess"), flush_interval=0.2)

    def ours() -> None:
        trace = tracer.begin("chat.completions")
        now = time.time_ns()
        for name in ("resolve", "render", "generate"):
            trace.add_span(name, now, now + 1000, detail=name)
        trace.set_tag("llmops.model_version", "capitals/1")
        trace.usage = (20, 1)
        trace.inputs, trace.outputs = {"messages": [{"role": "user", "content": "hi"}]}, ["Paris"]
        tracer.submit(trace)

    mlflow.set_experiment(experiment_id=ensure_experiment("bench-mlflow-trace"))

    @mlflow.trace(name="chat.completions", span_type="CHAIN")
    def theirs() -> None:
        for name in ("resolve", "render", "generate"):
            with mlflow.start_span(name=name) as span:
                span.set_inputs({"detail": name})
                span.set_outputs({"ok": True})

    def timed(fn, n: int) -> list[float]:
        fn()
        out = []
        for _ in range(n):
            started = time.perf_counter()
            fn()
            out.append(time.perf_counter() - started)
        return out

    our_times = timed(ours, calls)
    tracer.flush(120)
    their_times = timed(theirs, max(50, calls // 20))
    started = time.perf_counter()
    mlflow.flush_trace_async_logging()
    their_flush = time.perf_counter() - started
    # Writer capacity: 5,000 queued traces written in bulk.
    burst = Tracer(writer_for("bench-capacity"), flush_interval=3600)
    for _ in range(5000):
        trace = burst.begin("chat.completions")
        trace.add_span("generate", time.time_ns(), time.time_ns())
        trace.usage = (20, 1)
        burst.submit(trace)
    started = time.perf_counter()
    burst.flush(300)
    capacity = 5000 / (time.perf_counter() - started)
    burst.close()
    tracer.close()
    return {"ours_p50": _pct(our_times, 0.5), "ours_p99": _pct(our_times, 0.99),
            "theirs_p50": _pct(their_times, 0.5), "theirs_p99": _pct(their_times, 0.99),
            "theirs_n": len(their_times), "theirs_flush": their_flush, "capacity": capacity}


# ------------------------------------------------------------------------------------ remote mode


def _start_mlflow_server(workdir: Path, scheme: str):
    import subprocess

    port = free_port()
    log = open(workdir / f"mlflow-server-{scheme}.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", f"{scheme}:///{workdir / (scheme + '.db')}",
                                "--artifacts-destination", str(workdir / f"artifacts-{scheme}")],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/health", process, timeout=180)
    return url, process


def _server_count(experiment_id: str) -> int:
    import mlflow

    return len(mlflow.search_traces(locations=[experiment_id], max_results=1_000_000, include_spans=False,
                                    return_type="list"))


def _remote_run(url: str, replica_port: int, args: argparse.Namespace, workdir: Path) -> dict:
    """The fleet gateway at --rate, then the exporter's capacity, both into the server at `url`."""
    from llmops import registry
    from llmops.gateway.app import GatewayApp
    from llmops.gateway.config import GatewayConfig
    from llmops.gateway.server import BackgroundServer
    from llmops.gateway.trace_store import writer_for
    from llmops.gateway.tracing import Tracer
    from llmops.registry.store import configure, ensure_experiment
    from llmops.tiny_model import create_tiny_model

    os.environ["MLFLOW_TRACKING_URI"] = url
    configure()
    # 1. The fleet gateway at --rate, every request traced into the server.
    experiment = f"bench-remote-{int(time.time())}"
    # `capitals@production` in the server's registry: a base served upstream (the replica ignores weights).
    base = create_tiny_model(workdir / "tiny", overwrite=True)
    version = registry.register_base_model("capitals", base)
    registry.set_model_alias("capitals", "production", version.version)
    app = GatewayApp(GatewayConfig.model_validate({
        "engine": {"kind": "upstream", "upstream": {"urls": [f"http://127.0.0.1:{replica_port}"]}},
        "tracing": {"experiment": experiment, "flush_interval": 0.5}}))
    with BackgroundServer(app) as gateway:
        endpoint = gateway.url + "/v1/chat/completions"
        asyncio.run(_paced(endpoint, 20, 1.0))  # warm-up
        tracer = app.tracer
        before = tracer.stats.written
        sent, achieved, errors = asyncio.run(_paced(endpoint, args.rate, args.seconds))
        drained_at = time.perf_counter()
        tracer.flush(300)
        drain = time.perf_counter() - drained_at
        stats = tracer.stats
        written, dropped, failed = stats.written - before, stats.dropped, stats.failed
        busy, batches = stats.write_seconds, stats.batches
    on_server = _server_count(ensure_experiment(experiment))
    # 2. Capacity: 5,000 traces queued at once, written in batches.
    burst_experiment = f"bench-remote-capacity-{int(time.time())}"
    burst = Tracer(writer_for(burst_experiment, capture_text=True), flush_interval=3600, max_batch=1000)
    for i in range(5000):
        trace = burst.begin("chat.completions")
        now = time.time_ns()
        for name in ("resolve", "render", "generate"):
            trace.add_span(name, now, now + 1000)
        trace.set_tag("llmops.model_version", "tiny/1")
        trace.attributes["llmops.request_id"] = f"burst-{i}"
        trace.usage = (20, 1)
        trace.inputs, trace.outputs = {"messages": [{"role": "user", "content": QUESTIONS[i % 16]}]}, ["Paris"]
        burst.submit(trace)
    started = time.perf_counter()
    burst.flush(600)
    capacity_seconds = time.perf_counter() - started
    burst.close()
    capacity_stored = _server_count(ensure_experiment(burst_experiment))
    return {"sent": sent + 20, "achieved": achieved, "errors": errors, "written": written, "dropped": dropped,
            "failed": failed, "busy": busy, "batches": batches, "drain": drain, "on_server": on_server,
            "capacity_stored": capacity_stored, "capacity_seconds": capacity_seconds,
            "capacity": capacity_stored / capacity_seconds}


def _remote(args: argparse.Namespace, workdir: Path) -> None:
    import signal
    import subprocess

    import mlflow

    workdir.mkdir(parents=True, exist_ok=True)
    replica_port = free_port()
    replica = subprocess.Popen([sys.executable, str(Path(__file__).parent / "_fake_upstream.py"), str(replica_port), "5"])
    results: dict[str, dict] = {}
    try:
        wait_ready(f"http://127.0.0.1:{replica_port}/health", replica)
        if args.server_url:
            results["given server"] = _remote_run(args.server_url, replica_port, args, workdir)
        else:  # the same server on MLflow's SQL store (baseline) and on the llmops+ store plugin
            for label, scheme in (("mlflow store", "sqlite"), ("llmops store", "llmops+sqlite")):
                url, server = _start_mlflow_server(workdir, scheme)
                try:
                    results[label] = _remote_run(url, replica_port, args, workdir / scheme)
                finally:
                    os.killpg(server.pid, signal.SIGTERM)
                    server.wait(30)
    finally:
        replica.terminate()
    print(f"conditions: mlflow server {mlflow.__version__} ({'given' if args.server_url else 'SQLite, 1 worker'}), "
          f"fleet gateway (engine.kind: upstream) over a 5 ms replica, {os.cpu_count()} CPUs shared by "
          f"gateway, load generator and server; each trace: root + 3 child spans, 2 tags, token usage, text")
    for label, r in results.items():
        print(f"[{label}] gateway at {r['achieved']:.0f} req/s (asked {args.rate:g}) for {args.seconds:g} s, every "
              f"request traced: errors={r['errors']}; exporter wrote {r['written']} in {r['batches']} batches "
              f"({r['busy']:.2f} s busy), drained {r['drain']:.2f} s after the load; dropped={r['dropped']} "
              f"failed={r['failed']}; the server holds {r['on_server']} of {r['sent']} traced requests")
        print(f"[{label}] exporter capacity: 5000 queued traces, {r['capacity_stored']} stored on the server in "
              f"{r['capacity_seconds']:.2f} s = {r['capacity']:.0f} traces/s")
    ours = results.get("llmops store") or results["given server"]
    baseline = results.get("mlflow store")
    vs = f" baseline_mlflow_store_traces_per_s={baseline['capacity']:.0f} speedup={ours['capacity'] / baseline['capacity']:.1f}" if baseline else ""
    print(f"ratio={ours['capacity'] / 200:.2f} target=1 stored_traces_per_s={ours['capacity']:.0f} "
          f"target_stored_traces_per_s=200 dropped={ours['dropped']} target_dropped=0 failed={ours['failed']} "
          f"rate={ours['achieved']:.0f} target_rate=100 stored_of_sent={ours['on_server']}/{ours['sent']}{vs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=None, help="Requests per second (200; 100 with --remote).")
    parser.add_argument("--seconds", type=float, default=None, help="Seconds of paced load (10; 20 with --remote).")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--remote", action="store_true", help="Trace into an mlflow server over HTTP.")
    parser.add_argument("--server-url", default=None, help="With --remote: an mlflow server to use instead of starting one.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmops-bench-"))
    if args.remote:
        args.rate, args.seconds = args.rate or 100.0, args.seconds or 20.0
        return _remote(args, workdir)
    args.rate, args.seconds = args.rate or 200.0, args.seconds or 10.0
    prepare_workdir(workdir)

    # 1. A/B in one server.
    url = "/v1/chat/completions"
    port = free_port()
    server = start_gateway(workdir, port, tracing=True, extra=("tracing.sample_ratio=0.5",))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/health", server)
        asyncio.run(_closed_loop(base + url, 200))  # warm-up
        started = time.perf_counter()
        results = asyncio.run(_closed_loop(base + url, args.requests))
        closed_rate = len(results) / (time.perf_counter() - started)
    finally:
        stop(server)
    traced = [t for t, on in results if on]
    untraced = [t for t, on in results if not on]
    added_p50 = (_pct(traced, 0.5) - _pct(untraced, 0.5)) * 1000
    low, high = _bootstrap_p50_difference(traced, untraced)

    # 2. Off, then on (every request traced), then the paced load on the traced server.
    import mlflow

    from llmops.registry.store import ensure_experiment

    p50s = {}
    for tracing in (False, True):
        port = free_port()
        server = start_gateway(workdir, port, tracing=tracing, extra=("tracing.experiment=bench-rate",))
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/health", server)
            asyncio.run(_closed_loop(base + url, 200))
            p50s[tracing] = _pct([t for t, _ in asyncio.run(_closed_loop(base + url, args.requests // 2))], 0.5)
            if tracing:
                time.sleep(1)  # let the closed-loop traces drain first
                traces = '{writer="traces"}'
                before = _metric(base, "llmops:background_written_total" + traces)
                before_seconds = _metric(base, "llmops:background_write_seconds_total" + traces)
                sent, achieved, errors = asyncio.run(_paced(base + url, args.rate, args.seconds))
                time.sleep(2)  # a few flush intervals, so the counters include the last batch
                dropped = _metric(base, "llmops:background_dropped_total" + traces)
                failed = _metric(base, "llmops:background_failed_total" + traces)
                paced_stored = _metric(base, "llmops:background_written_total" + traces) - before
                export_seconds = _metric(base, "llmops:background_write_seconds_total" + traces) - before_seconds
        finally:
            stop(server)  # shutdown flushes whatever is still queued
    stored = len(mlflow.search_traces(locations=[ensure_experiment("bench-rate")], max_results=100_000,
                                      return_type="list"))
    expected = 200 + args.requests // 2 + sent

    # 3. The exporter at the target rate beside a busy engine; 4. request-path cost, writer capacity.
    beside = _exporter_beside_engine(workdir, args.rate, args.seconds)
    inproc = _in_process(workdir, 2000)

    import mlflow as _m

    print(f"conditions: tiny Llama + LoRA, chat max_tokens=1, concurrency 16, MLflow {_m.__version__} SQLite store, "
          f"{os.cpu_count()} CPUs (shared), torch threads=1")
    print(f"A/B in one server (sample_ratio=0.5, {len(results)} requests, {closed_rate:.0f} req/s): "
          f"p50 traced {_pct(traced, 0.5) * 1000:.2f} ms (n={len(traced)}), untraced "
          f"{_pct(untraced, 0.5) * 1000:.2f} ms (n={len(untraced)}); p99 traced {_pct(traced, 0.99) * 1000:.2f} ms, "
          f"untraced {_pct(untraced, 0.99) * 1000:.2f} ms")
    print(f"A/B p50 difference {added_p50:.3f} ms, bootstrap 95% interval [{low:.3f}, {high:.3f}] ms")
    print(f"off vs on (two servers, {args.requests // 2} requests each): p50 off {p50s[False] * 1000:.2f} ms, "
          f"on {p50s[True] * 1000:.2f} ms, difference {(p50s[True] - p50s[False]) * 1000:.2f} ms")
    print(f"paced load, every request traced: {sent} requests in {args.seconds:g} s at {achieved:.0f} req/s "
          f"(asked {args.rate:g}), errors={errors}; exporter stored {paced_stored:.0f} in {export_seconds:.2f} s busy "
          f"({paced_stored / max(export_seconds, 1e-9):.0f} traces/s while serving); dropped={dropped:.0f} "
          f"failed={failed:.0f}; MLflow store holds {stored} of the {expected} traced requests of this server")
    print(f"exporter beside a busy engine (16 streams, {beside['tokens']} tokens decoded): {beside['sent']} traces "
          f"submitted at {beside['rate']:.0f}/s for {args.seconds:g} s; {beside['stored_during']} stored meanwhile, "
          f"rest drained {beside['drain_after']:.2f} s after; stored={beside['stored']} dropped={beside['dropped']} "
          f"failed={beside['failed']}")
    print(f"request-path cost in-process: llmops p50 {inproc['ours_p50'] * 1e6:.1f} us (p99 "
          f"{inproc['ours_p99'] * 1e6:.1f} us); @mlflow.trace p50 {inproc['theirs_p50'] * 1e3:.2f} ms (p99 "
          f"{inproc['theirs_p99'] * 1e3:.2f} ms, {inproc['theirs_n']} calls, then flush {inproc['theirs_flush']:.1f} s "
          f"= {inproc['theirs_n'] / max(inproc['theirs_flush'], 1e-9):.0f} traces/s)")
    print(f"load-generator transport errors (not counted in latencies): {len(TRANSPORT_ERRORS)} "
          f"{TRANSPORT_ERRORS[:3]}")
    print(f"bulk writer capacity: {inproc['capacity']:.0f} traces/s (5000 traces, one queue)")
    print(f"ratio={inproc['theirs_p50'] / inproc['ours_p50']:.1f} target=1 added_p50_ms={added_p50:.3f} "
          f"target_added_p50_ms=0.3 added_p50_ci_ms=[{low:.2f},{high:.2f}] request_path_p50_us={inproc['ours_p50'] * 1e6:.1f} "
          f"dropped={dropped + beside['dropped']:.0f} target_dropped=0 rate_beside_engine={beside['rate']:.0f} "
          f"stored={stored} expected={expected} "
          f"achieved_rps={achieved:.0f} stored_traces_per_s={inproc['capacity']:.0f}")


if __name__ == "__main__":
    main()
