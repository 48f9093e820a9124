"""`BackgroundBatcher`: batches, a bounded queue that drops and counts, failures counted per item."""

from __future__ import annotations

import threading

from llmops.background import BackgroundBatcher


def test_items_are_written_in_batches_of_at_most_max_batch():
    batches = []
    batcher = BackgroundBatcher("test", batches.append, flush_interval=60, max_batch=4)
    for i in range(10):
        assert batcher.submit(i)
    assert batcher.flush(10)
    assert [item for batch in batches for item in batch] == list(range(10))
    assert max(len(batch) for batch in batches) <= 4
    stats = batcher.stats
    assert (stats.queued, stats.written, stats.dropped, stats.failed) == (0, 10, 0, 0)
    batcher.close()


def test_a_full_queue_drops_and_counts_without_blocking():
    gate = threading.Event()

    def slow(batch):
        gate.wait(10)

    batcher = BackgroundBatcher("test", slow, flush_interval=0.01, max_batch=1, max_queue=3)
    accepted = [batcher.submit(i) for i in range(50)]
    assert accepted.count(False) >= 46 and batcher.stats.dropped == accepted.count(False)
    assert batcher.stats.queued <= 4
    gate.set()
    batcher.close()
    assert batcher.stats.written == accepted.count(True)
    assert not batcher.submit("late")  # closed: dropped and counted
    assert batcher.stats.dropped == accepted.count(False) + 1


def test_failures_are_counted_per_item_and_never_raised():
    def write(batch):
        if "boom" in batch:
            raise ConnectionError("store down")
        return sum(1 for item in batch if item == "bad")  # the store refused these

    def prepare(item):
        if item == "unparsable":
            raise ValueError("malformed")
        return None if item == "skip" else item

    batcher = BackgroundBatcher("test", write, flush_interval=60, max_batch=100, prepare=prepare)
    for item in ("a", "bad", "unparsable", "skip", "b"):
        batcher.submit(item)
    assert batcher.flush(10)
    assert (batcher.stats.written, batcher.stats.failed) == (2, 2)
    for item in ("c", "boom"):
        batcher.submit(item)
    batcher.close()
    assert (batcher.stats.written, batcher.stats.failed) == (2, 4)
    assert batcher.stats.batches == 2


def test_stats_are_exported_per_writer_on_metrics(tmp_path):
    from llmops.gateway.metrics import GatewayMetrics
    from llmops.traffic import TrafficWriter

    metrics = GatewayMetrics()
    assert b"llmops:background_" not in metrics.render()  # nothing watched yet: no empty series
    capture = TrafficWriter(tmp_path, flush_interval=60, max_queue=2)
    traces = BackgroundBatcher("traces", lambda batch: None, flush_interval=60)
    metrics.watch(capture.batcher, traces, None)
    for i in range(3):
        capture.submit({"time": 1_790_000_000.0, "request_id": str(i), "model_version": "m/1"})
    text = metrics.render().decode()
    assert 'llmops:background_queued{writer="capture"} 2.0' in text
    assert 'llmops:background_dropped_total{writer="capture"} 1.0' in text
    capture.close()
    traces.close()
    text = metrics.render().decode()
    assert 'llmops:background_written_total{writer="capture"} 2.0' in text
    assert 'llmops:background_queued{writer="capture"} 0.0' in text
    assert 'llmops:background_written_total{writer="traces"} 0.0' in text
