"""Fair admission between requests (`llmops/gateway/engines/scheduler.py`): who gets the free slots
and who steps out, asserted as orders and counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from llmops.gateway.engines.scheduler import FairScheduler


@dataclass(eq=False)
class Seq:
    group: str
    index: int
    cancelled: bool = False
    queued: bool = False
    generated: list = field(default_factory=list)


def _queue(scheduler, group, count):
    seqs = [Seq(group, i) for i in range(count)]
    for seq in seqs:
        scheduler.add(seq)
    return seqs


def test_a_newcomer_goes_ahead_of_a_huge_request():
    scheduler = FairScheduler()
    _queue(scheduler, "huge", 32000)
    _queue(scheduler, "chat", 1)
    picked = scheduler.pick(4, Counter())
    assert [s.group for s in picked].count("chat") == 1
    # The huge request already runs 32 sequences; the next slot goes to a chat that runs none.
    _queue(scheduler, "late-chat", 1)
    assert [s.group for s in scheduler.pick(1, Counter({"huge": 32}))] == ["late-chat"]


def test_slots_are_shared_round_robin_and_fifo_within_a_request():
    scheduler = FairScheduler()
    _queue(scheduler, "a", 10), _queue(scheduler, "b", 10)
    c = _queue(scheduler, "c", 2)
    picked = scheduler.pick(9, Counter())
    assert [s.group for s in picked] == ["a", "b", "c", "a", "b", "c", "a", "b", "a"]
    assert [s.index for s in picked if s.group == "a"] == [0, 1, 2, 3]
    assert len(scheduler) == 22 - 9 and not any(s.queued for s in picked) and c[1].queued is False


def test_the_group_running_fewest_goes_first():
    scheduler = FairScheduler()
    _queue(scheduler, "a", 5)
    _queue(scheduler, "b", 5)
    picked = scheduler.pick(3, Counter({"a": 6, "b": 2}))
    assert [s.group for s in picked] == ["b", "b", "b"]


def test_cancelled_sequences_are_skipped_and_not_counted():
    scheduler = FairScheduler()
    seqs = _queue(scheduler, "a", 1000)
    for seq in seqs[:999]:
        scheduler.cancel(seq)
    assert len(scheduler) == 1
    assert scheduler.pick(5, Counter()) == [seqs[999]] and len(scheduler) == 0


def test_preemption_frees_one_slot_per_starved_request_from_the_largest():
    scheduler = FairScheduler()
    _queue(scheduler, "huge", 100)
    _queue(scheduler, "chat1", 1)
    _queue(scheduler, "chat2", 1)
    assert scheduler.preemptions(0, Counter({"huge": 8}), capacity=8) == ["huge", "huge"]
    assert scheduler.preemptions(1, Counter({"huge": 7}), capacity=8) == ["huge"]
    assert scheduler.preemptions(2, Counter({"huge": 6}), capacity=8) == []


def test_no_preemption_below_a_fair_share_or_without_starvation():
    scheduler = FairScheduler()
    _queue(scheduler, "a", 10)
    _queue(scheduler, "b", 10)
    # Both already run: nobody is starved, finishing sequences rebalance them.
    assert scheduler.preemptions(0, Counter({"a": 7, "b": 1}), capacity=8) == []
    _queue(scheduler, "c", 1)
    _queue(scheduler, "d", 1)
    _queue(scheduler, "e", 1)
    # Five groups share 4 slots: one each at most; nobody holds more than its share, nobody steps out.
    assert scheduler.preemptions(0, Counter({"a": 1, "b": 1, "c": 1, "d": 1}), capacity=4) == []


def test_a_preempted_sequence_goes_before_its_siblings():
    scheduler = FairScheduler()
    seqs = _queue(scheduler, "a", 3)
    first = scheduler.pick(1, Counter())[0]
    assert first is seqs[0]
    scheduler.requeue(first)
    assert scheduler.pick(2, Counter()) == [seqs[0], seqs[1]]


def test_thousands_of_one_sequence_requests_are_first_come_first_served():
    scheduler = FairScheduler()
    seqs = [Seq(f"client-{i}", 0) for i in range(10_000)]
    for seq in seqs:
        scheduler.add(seq)
    running = Counter({"client-0": 0})
    assert scheduler.pick(4, running) == seqs[:4]
    # Each running request holds one slot, its fair share: nobody is preempted, order is kept.
    assert scheduler.preemptions(0, Counter({s.group: 1 for s in seqs[:4]}), capacity=4) == []
    assert scheduler.pick(2, Counter()) == seqs[4:6]


def test_fully_cancelled_requests_are_forgotten():
    scheduler = FairScheduler()
    gone = _queue(scheduler, "gone", 50)
    kept = _queue(scheduler, "kept", 1)
    for seq in gone:
        scheduler.cancel(seq)
    assert scheduler.pick(3, Counter()) == kept
    assert len(scheduler) == 0 and list(scheduler.sequences()) == []
