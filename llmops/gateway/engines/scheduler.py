"""Which waiting sequences join the running batch: fair between client requests.

One `/v1/completions` request may carry thousands of prompts times `n`; admitted first-come
first-served, its sequences would fill every batch slot until the last of them finished, and a short
chat from another client would wait behind all of them (seen: 4 s behind 32,000 sequences).

Sequences are kept per *group* (one client request, `GenerationRequest.group`). Admission fills the
free slots from the group with the fewest running sequences first, ties going to the group whose
last admission (or arrival) is oldest, so a newcomer with nothing running goes ahead of a request
that already runs many.
When the batch is full and a group has nothing running at all, `preemptions` names sequences of
the largest group, beyond its fair share of the batch, to step out: they are recomputed from
prompt + generated tokens when they get a slot again (vLLM's preemption by recompute), so their
clients see no gap in the tokens, only a pause.

Plain Python with no torch: the engine's worker thread owns it; nothing here is thread-safe.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, OrderedDict, deque
from typing import Any, Hashable, Iterator

__all__ = ["FairScheduler"]


class FairScheduler:
    """The waiting sequences of every group, and the fair choice among them.

    A sequence is anything with `group` (hashable), `cancelled` (bool) and `queued` (bool, kept by
    the scheduler) attributes. Cancelled sequences are dropped lazily, so cancelling 30,000 of them
    costs nothing.
    """

    def __init__(self) -> None:
        # Groups with waiting sequences, oldest activity first (arrival, or the last time one was admitted).
        self._groups: OrderedDict[Hashable, deque] = OrderedDict()
        self._since: dict[Hashable, int] = {}  # group -> tick of that activity (its place in `_groups`)
        self._tick = itertools.count()
        self._waiting = 0

    def __len__(self) -> int:
        """Waiting sequences, cancelled ones excluded."""
        return self._waiting

    def add(self, seq: Any) -> None:
        """Queue a new sequence at the back of its group."""
        self._queue_of(seq.group).append(seq)
        seq.queued = True
        self._waiting += 1

    def requeue(self, seq: Any) -> None:
        """Put a preempted sequence back at the front of its group: it goes before its siblings."""
        self._queue_of(seq.group).appendleft(seq)
        seq.queued = True
        self._waiting += 1

    def cancel(self, seq: Any) -> None:
        """Mark `seq` cancelled; if it is waiting, it no longer counts and is skipped when reached."""
        seq.cancelled = True
        if seq.queued:
            seq.queued = False
            self._waiting -= 1

    def sequences(self) -> Iterator[Any]:
        """Every waiting sequence (cancelled ones may still appear)."""
        for queue in self._groups.values():
            yield from queue

    def pick(self, room: int, running: Counter) -> list:
        """Up to `room` sequences to admit, fewest-running group first (`running`: group -> count).

        Costs O(room + running groups), not O(waiting groups): only the `room` oldest groups with
        nothing running can win, so thousands of waiting one-sequence requests are not all scanned.
        """
        candidates = [group for group, count in running.items() if count > 0 and group in self._groups]
        idle, stale = 0, []
        for group, queue in self._groups.items():
            if idle >= room:
                break
            if not self._live_head(queue):
                stale.append(group)
            elif running.get(group, 0) == 0:
                candidates.append(group)
                idle += 1
        self._drop(stale)
        candidates = [group for group in candidates if group in self._groups]
        heap = [(running.get(group, 0), self._since[group], group) for group in candidates]
        heapq.heapify(heap)  # ticks are unique, so groups themselves are never compared
        picked: list = []
        while heap and len(picked) < room:
            count, _, group = heapq.heappop(heap)
            seq = self._pop(group)
            if seq is None:
                continue
            picked.append(seq)
            if group in self._groups:
                self._touch(group)
                heapq.heappush(heap, (count + 1, self._since[group], group))
        return picked

    def preemptions(self, room: int, running: Counter, capacity: int) -> list[Hashable]:
        """Groups to take one running sequence from each, so that starved groups get a slot now.

        A group is starved when it has sequences waiting and none running. When the free `room` is
        not enough for them, one sequence steps out of the group running the most, for each starved
        group too many, as long as that group holds more than its fair share (`capacity` split
        evenly among the running and waiting groups).
        """
        counts = Counter({group: count for group, count in running.items() if count > 0})
        if not counts:
            return []
        groups = len(self._groups) + sum(1 for group in counts if group not in self._groups)
        share = max(1, capacity // groups)
        if max(counts.values()) <= share:
            return []
        starved, stale = 0, []
        for group, queue in self._groups.items():  # stops early: at most `room + capacity` count
            if not self._live_head(queue):
                stale.append(group)
            elif group not in counts:
                starved += 1
                if starved >= room + capacity:
                    break
        self._drop(stale)
        victims: list[Hashable] = []
        for _ in range(starved - room):
            group, count = counts.most_common(1)[0]
            if count <= share:
                break
            victims.append(group)
            counts[group] -= 1
        return victims

    def _queue_of(self, group: Hashable) -> deque:
        queue = self._groups.get(group)
        if queue is None:
            queue = self._groups[group] = deque()
            self._since[group] = next(self._tick)
        return queue

    def _drop(self, groups: list[Hashable]) -> None:
        """Forget groups whose every waiting sequence was cancelled."""
        for group in groups:
            del self._groups[group]
            del self._since[group]

    def _touch(self, group: Hashable) -> None:
        self._since[group] = next(self._tick)
        self._groups.move_to_end(group)

    @staticmethod
    def _live_head(queue: deque) -> bool:
        """Drop cancelled sequences from the front; True when a live one is left."""
        while queue and queue[0].cancelled:
            queue.popleft()
        return bool(queue)

    def _pop(self, group: Hashable) -> Any:
        queue = self._groups.get(group)
        if queue is None:
            return None
        seq = None
        if self._live_head(queue):
            seq = queue.popleft()
            seq.queued = False
            self._waiting -= 1
        if not self._live_head(queue):
            self._drop([group])
        return seq
