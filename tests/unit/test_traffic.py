"""The traffic dataset contract (`llmops.traffic`): partitioned Parquet written off the request path,
read back across every writer; crash safety; malformed records; writers that share one dataset."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmops import traffic
from llmops.errors import ConfigError
from llmops.traffic.location import open_root, redact
from llmops.traffic.reader import since_time


def _record(i: int, model_version: str = "capitals/2", when: float | None = None) -> dict:
    return {"time": when or 1_790_000_000.0 + i, "request_id": f"r{i}", "key_id": "team-a", "endpoint": "chat.completions",
            "model": "capitals@production", "model_version": model_version, "prompt_ref": "capitals-qa@production",
            "prompt_version": "capitals-qa/3", "status": 200,
            "prompt_token_ids": [1, 2, i], "completion_token_ids": [[10 + i, 11 + i]], "finish_reasons": ["stop"],
            "prompt_tokens": 3, "completion_tokens": 2, "latency_ms": 12.5, "ttft_ms": 3.0,
            "prompt_text": "secret prompt", "completion_text": ["answer"]}


def test_writes_partitioned_parquet_and_reads_it_back(tmp_path):
    root = tmp_path / "traffic"
    writer = traffic.TrafficWriter(root, flush_interval=0.05)
    for i in range(25):
        writer.submit(_record(i))
    writer.submit(lambda: _record(99, model_version="tiny/1"))  # built on the writer thread
    writer.close()
    files = sorted(p.relative_to(root).parts[:2] for p in root.rglob("*.parquet"))
    assert set(files) == {("date=2026-09-21", "model=capitals"), ("date=2026-09-21", "model=tiny")}
    assert not list(root.rglob("*.tmp"))
    records = traffic.read(model="capitals@production", root=root)
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(25)]
    assert records[7]["prompt_token_ids"] == [1, 2, 7] and records[7]["completion_token_ids"] == [[17, 18]]
    assert records[7]["prompt_version"] == "capitals-qa/3"
    assert records[7]["prompt_text"] is None and records[7]["completion_text"] is None  # text off by default
    assert records[0]["time"].tzinfo is not None
    assert len(traffic.read(root=root)) == 26
    since = dt.datetime.fromtimestamp(1_790_000_020, dt.timezone.utc)
    assert len(traffic.read(model="capitals", since=since, root=root)) == 5
    assert traffic.read(since="1h", root=root) == []  # all of it is older than an hour
    assert traffic.read(model="nothing", root=root) == []
    assert traffic.read(root=tmp_path / "never-written") == []
    assert writer.stats.written == 26 and writer.stats.failed == 0 and writer.stats.queued == 0


def test_prompt_version_is_nullable_and_text_kept_only_when_configured(tmp_path):
    writer = traffic.TrafficWriter(tmp_path, flush_interval=10, keep_text=True)
    writer.submit(_record(1))
    writer.submit({**_record(2), "prompt_version": None, "prompt_ref": None})
    writer.close()
    first, second = traffic.read(root=tmp_path)
    assert first["prompt_text"] == "secret prompt" and first["completion_text"] == ["answer"]
    assert second["prompt_version"] is None and second["prompt_ref"] is None


def test_one_malformed_record_fails_alone(tmp_path):
    writer = traffic.TrafficWriter(tmp_path, flush_interval=10)
    writer.submit(_record(1))
    writer.submit({**_record(2), "prompt_ref": {"not": "a ref"}})  # a client's malformed `prompt` value
    writer.submit({**_record(3), "prompt_token_ids": ["x"]})
    writer.submit(lambda: 1 / 0)  # a response that cannot be parsed
    writer.submit(_record(4))
    writer.close()
    assert [r["request_id"] for r in traffic.read(root=tmp_path)] == ["r1", "r4"]
    assert writer.stats.written == 2 and writer.stats.failed == 3


def test_two_writers_in_one_dataset_never_collide(tmp_path):
    writers = [traffic.TrafficWriter(tmp_path, flush_interval=0.01) for _ in range(2)]
    for i in range(200):
        writers[i % 2].submit(_record(i % 5))  # same second, same partition
    for writer in writers:
        writer.close()
    names = [p.name for p in tmp_path.rglob("*.parquet")]
    assert len(names) == len(set(names)) >= 2
    assert f"-{os.getpid()}-" in names[0]
    assert len(traffic.read(root=tmp_path)) == 200


def test_start_up_removes_only_temporaries_of_crashed_writers(tmp_path):
    import socket

    host = "".join(c if c.isalnum() or c == "." else "_" for c in socket.gethostname())
    folder = tmp_path / "date=2026-01-01" / "model=x"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    crashed = folder / f"part-20260101T000000-{host}-{dead.stdout.strip()}-ab12-1.parquet.tmp"
    alive_here = folder / f"part-20260101T000000-{host}-{os.getppid()}-cd34-1.parquet.tmp"
    other_host = folder / "part-20260101T000000-gateway_b-12345-ef56-1.parquet.tmp"
    ancient = folder / "part-20260101T000000-gateway_c-999-0a0a-1.parquet.tmp"
    for path in (crashed, alive_here, other_host, ancient):
        path.write_bytes(b"PAR1 half a file")
    os.utime(ancient, (time.time() - 7200, time.time() - 7200))
    assert traffic.read(root=tmp_path) == []  # readers never see unfinished files
    traffic.TrafficWriter(tmp_path, flush_interval=10).close()
    assert not crashed.exists() and not ancient.exists()  # its process is gone; older than an hour
    assert alive_here.exists() and other_host.exists()  # maybe in flight: another gateway's


def test_survives_sigkill_with_only_readable_files(tmp_path):
    """A writer process killed with SIGKILL mid-stream leaves complete files only."""
    import pyarrow.parquet as pq

    script = textwrap.dedent(f"""
        import time
        from llmops.traffic import TrafficWriter
        writer = TrafficWriter({str(tmp_path)!r}, flush_interval=0.01)
        i = 0
        while True:
            for _ in range(50):
                writer.submit({{"time": time.time(), "request_id": str(i), "model_version": "m/1",
                               "prompt_token_ids": list(range(200)), "completion_token_ids": [list(range(200))]}})
                i += 1
            time.sleep(0.002)
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        start = time.monotonic()
        while len(list(tmp_path.rglob("*.parquet"))) < 5:
            assert time.monotonic() - start < 60 and process.poll() is None
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    for path in tmp_path.rglob("*.parquet"):
        pq.read_table(path)  # every finished name is a complete file
    records = traffic.read(root=tmp_path)
    assert len(records) >= 5 and all(len(r["prompt_token_ids"]) == 200 for r in records)


def test_old_files_without_new_columns_read_as_null(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "date=2026-01-01" / "model=capitals"
    folder.mkdir(parents=True)
    old = pa.table({"time": pa.array([dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)], pa.timestamp("us", tz="UTC")),
                    "request_id": ["old"], "model_version": ["capitals/1"]})
    pq.write_table(old, folder / "part-old.parquet")
    (record,) = traffic.read(root=tmp_path)
    assert record["request_id"] == "old" and record["prompt_version"] is None and record["prompt_token_ids"] is None


def test_locations_uris_and_redaction(tmp_path):
    assert open_root(tmp_path).local and open_root(f"file://{tmp_path}").local
    assert redact("s3://AKIA:s3cr3t@bucket/prefix?endpoint_override=x") == "s3://***@bucket/prefix"
    assert redact(Path("traffic")) == "traffic"
    with pytest.raises(ConfigError, match="nosuchscheme://bucket"):
        open_root("nosuchscheme://bucket/prefix")
    assert traffic.read(root=f"file://{tmp_path}") == []


def test_capture_path_keeps_uris_and_resolves_folders_against_the_config():
    config = traffic.CaptureConfig.model_validate({"path": "s3://bucket/traffic"}, context={"base_dir": "/srv"})
    assert config.path == "s3://bucket/traffic"
    config = traffic.CaptureConfig.model_validate({"path": "traffic"}, context={"base_dir": "/srv"})
    assert config.path == Path("/srv/traffic")


def test_since_parsing():
    assert since_time(None) is None
    assert abs((dt.datetime.now(dt.timezone.utc) - since_time("2h")).total_seconds() - 7200) < 5
    assert since_time("2026-01-01T00:00:00") == dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(ValueError, match="neither a duration"):
        since_time("yesterday")
