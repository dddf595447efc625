"""Concurrency across keys, order within a key, and a commit point that never passes unfinished
work: the scheduler behind every service's consumer (the model of Confluent's Parallel Consumer).

Records of different keys (goals) are handled at the same time, also when they share a
partition; records of one key are handled one after another in the order they were fetched.
Work finishes out of order, so each partition's commit point is its lowest unfinished offset:
a crash at any moment redelivers everything not yet finished, and nothing finished is lost.
The number of records held (running or waiting behind their key) is capped; the consumer stops
fetching while the cap is reached instead of buffering more.

No Kafka here: records are `Work` items, partitions any hashable value, so the unit tests drive
the scheduler directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("goalrail.keyed")

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Work:
    key: Hashable
    partition: Hashable
    offset: int
    payload: Any


class OffsetTracker:
    """One partition's offsets in fetch order; the commit point is the lowest one not finished
    (or one past the last, when all are finished)."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._finished: set[int] = set()
        self._last: int | None = None

    def add(self, offset: int) -> None:
        self._pending.append(offset)
        self._last = offset

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        while self._pending and self._pending[0] in self._finished:
            self._finished.discard(self._pending.popleft())

    @property
    def uncommitted(self) -> int:
        """Offsets from the commit point on that were fetched (running, waiting or finished)."""
        return len(self._pending)

    @property
    def commit_point(self) -> int | None:
        """The offset to commit: every offset below it is finished. None before anything was added."""
        if self._pending:
            return self._pending[0]
        return None if self._last is None else self._last + 1


class KeyedScheduler:
    """Runs `handle(payload)` for each submitted `Work`, one at a time per key, at most
    `max_in_flight` held at once. A handler that raises is retried (with backoff, holding only
    its own key) until it succeeds: the consume guard turns bad input into dead letters, so what
    reaches here is a failing dependency (broker, store), and skipping the record would lose it."""

    def __init__(self, handle: Callable[[Any], Awaitable[None]], max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._handle = handle
        self.max_in_flight = max_in_flight
        self._queues: dict[Hashable, deque[Work]] = {}
        self._workers: dict[Hashable, asyncio.Task[None]] = {}
        self._trackers: dict[Hashable, OffsetTracker] = {}
        self._committed: dict[Hashable, int] = {}
        self._held = 0
        self._changed = asyncio.Condition()
        self.progressed = asyncio.Event()  # a commit point may have moved

    # --- capacity ---------------------------------------------------------------------------

    @property
    def held(self) -> int:
        """Records running or waiting behind their key."""
        return self._held

    @property
    def room(self) -> int:
        return max(self.max_in_flight - self._held, 0)

    @property
    def full(self) -> bool:
        return self._held >= self.max_in_flight

    def backlogged(self, limit: int) -> set[Hashable]:
        """Partitions with `limit` or more offsets fetched past their commit point: one record
        that hangs holds the commit point, and what finishes after it must not pile up without
        end either."""
        return {p for p, tracker in self._trackers.items() if tracker.uncommitted >= limit}

    async def wait_for_room(self, timeout: float) -> bool:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self.full), timeout)
            except TimeoutError:
                return False
        return True

    # --- work ---------------------------------------------------------------------------------

    def submit(self, work: Work) -> None:
        self._trackers.setdefault(work.partition, OffsetTracker()).add(work.offset)
        self._held += 1
        queue = self._queues.get(work.key)
        if queue is None:
            queue = self._queues[work.key] = deque()
        queue.append(work)
        if work.key not in self._workers:
            self._workers[work.key] = asyncio.get_running_loop().create_task(self._drain_key(work.key))

    def skip(self, partition: Hashable, offset: int) -> None:
        """A record with nothing to do here: finished as soon as it is fetched. Its offset is
        committed with the others, never before an unfinished one of its partition."""
        tracker = self._trackers.setdefault(partition, OffsetTracker())
        tracker.add(offset)
        tracker.finish(offset)
        self.progressed.set()

    async def _drain_key(self, key: Hashable) -> None:
        queue = self._queues[key]
        try:
            while queue:
                work = queue[0]
                await self._run(work)
                queue.popleft()
                await self._finished(work)
        finally:
            del self._workers[key]
            if not queue:
                self._queues.pop(key, None)

    async def _run(self, work: Work) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._handle(work.payload)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — see the class docstring: retried, never dropped
                log.exception("handling %s@%s failed; retrying in %.1fs", work.partition, work.offset, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _finished(self, work: Work) -> None:
        tracker = self._trackers.get(work.partition)
        if tracker is not None:  # None: the partition was revoked while this ran
            tracker.finish(work.offset)
        self._held -= 1
        self.progressed.set()
        async with self._changed:
            self._changed.notify_all()

    # --- commit points --------------------------------------------------------------------------

    def commit_points(self) -> dict[Hashable, int]:
        """Partitions whose commit point moved since the last call, with that point. The caller
        commits them; a failed commit may be retried by calling `forget_commits`."""
        moved: dict[Hashable, int] = {}
        for partition, tracker in self._trackers.items():
            point = tracker.commit_point
            if point is not None and point > self._committed.get(partition, -1):
                moved[partition] = self._committed[partition] = point
        return moved

    def forget_commits(self, partitions: Iterable[Hashable]) -> None:
        """The commit of these partitions failed: report their points again next time."""
        for partition in partitions:
            self._committed.pop(partition, None)

    # --- rebalance and shutdown ---------------------------------------------------------------

    async def revoke(self, partitions: Iterable[Hashable], timeout: float) -> dict[Hashable, int]:
        """These partitions go to another consumer: drop their waiting records (the new owner
        reads them again from the commit point), let their running ones finish for up to
        `timeout` seconds, and return their final commit points (forgetting them)."""
        revoked = set(partitions)
        for key, queue in self._queues.items():
            running = queue[0] if key in self._workers and queue else None
            kept = deque(w for w in queue if w is running or w.partition not in revoked)
            self._held -= len(queue) - len(kept)
            queue.clear()
            queue.extend(kept)
        async with self._changed:
            self._changed.notify_all()
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not self._running_in(revoked)), timeout)
            except TimeoutError:
                log.warning("revoked partitions still busy after %.1fs; their new owner repeats that work", timeout)
        points = {p: t.commit_point for p, t in self._trackers.items() if p in revoked}
        for partition in revoked:
            self._trackers.pop(partition, None)
            self._committed.pop(partition, None)
        return {p: point for p, point in points.items() if point is not None}

    def _running_in(self, partitions: set[Hashable]) -> bool:
        return any(queue and queue[0].partition in partitions for key, queue in self._queues.items()
                   if key in self._workers)

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is held (True) or `timeout` passes (False)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._held == 0), timeout)
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        """Cancel whatever still runs: it is not finished, so its offset is not committed."""
        workers = list(self._workers.values())
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
