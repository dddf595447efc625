"""The keyed scheduler: order within a key, concurrency across keys, a commit point that never
passes unfinished work, a cap that stops intake, revocation and a crash mid-batch."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from shared import keyed
from shared.keyed import KeyedScheduler, OffsetTracker, Work


class Gated:
    """A handler whose every call waits for its own gate; records what ran and what overlapped."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.started: list[int] = []
        self.finished: list[int] = []
        self.running: dict[str, int] = defaultdict(int)
        self.overlap: list[str] = []

    async def __call__(self, payload: tuple[str, int]) -> None:
        key, offset = payload
        self.running[key] += 1
        if self.running[key] > 1:
            self.overlap.append(key)
        self.started.append(offset)
        try:
            await self.gates[offset].wait()
        finally:
            self.running[key] -= 1
        self.finished.append(offset)

    def release(self, *offsets: int) -> None:
        for offset in offsets:
            self.gates[offset].set()


def work(key: str, offset: int, partition: str = "p0") -> Work:
    return Work(key=key, partition=partition, offset=offset, payload=(key, offset))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_tracker_commit_point_is_the_lowest_unfinished_offset():
    tracker = OffsetTracker()
    assert tracker.commit_point is None
    for offset in (10, 11, 12, 13):
        tracker.add(offset)
    assert tracker.commit_point == 10
    tracker.finish(12)
    tracker.finish(11)
    assert tracker.commit_point == 10  # 10 still runs: 11 and 12 are redelivered after a crash
    tracker.finish(10)
    assert tracker.commit_point == 13
    tracker.finish(13)
    assert tracker.commit_point == 14


def test_tracker_skips_gaps_in_offsets():
    tracker = OffsetTracker()
    for offset in (3, 7, 9):  # compacted or transaction-marker offsets never arrive
        tracker.add(offset)
    tracker.finish(3)
    assert tracker.commit_point == 7
    tracker.finish(9)
    tracker.finish(7)
    assert tracker.commit_point == 10


async def test_one_key_runs_in_order_and_never_twice_at_once():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    for offset in range(4):
        scheduler.submit(work("goal-a", offset))
    await settle()
    assert handler.started == [0]
    for offset in range(4):
        handler.release(offset)
        await settle()
    assert handler.finished == [0, 1, 2, 3]
    assert handler.overlap == []
    assert await scheduler.drain(1)


async def test_other_keys_progress_while_one_key_hangs_on_the_same_partition():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.submit(work("slow", 0))
    scheduler.submit(work("slow", 1))
    scheduler.submit(work("fast", 2))
    scheduler.submit(work("other", 3))
    await settle()
    assert sorted(handler.started) == [0, 2, 3]  # both other goals run beside the hanging one
    handler.release(2, 3)
    await settle()
    assert sorted(handler.finished) == [2, 3]
    assert 1 not in handler.started  # the slow goal's next event waits for its first
    await scheduler.close()


async def test_the_commit_point_never_passes_an_unfinished_offset():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    for offset, key in enumerate(["a", "b", "c", "d"]):
        scheduler.submit(work(key, offset))
    await settle()
    assert scheduler.commit_points() == {"p0": 0}
    handler.release(1, 2, 3)  # finished out of order
    await settle()
    assert scheduler.commit_points() == {}  # offset 0 still runs: nothing more to commit
    handler.release(0)
    await settle()
    assert scheduler.commit_points() == {"p0": 4}
    assert scheduler.commit_points() == {}  # reported once


async def test_a_skipped_record_is_committed_but_never_past_an_unfinished_one():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.skip("p0", 0)  # nothing to do: committed at once
    assert scheduler.progressed.is_set()
    assert scheduler.commit_points() == {"p0": 1}
    scheduler.submit(work("a", 1))
    scheduler.skip("p0", 2)
    scheduler.submit(work("a", 3))
    scheduler.skip("p0", 4)
    await settle()
    assert scheduler.held == 2  # skipped records take no slot
    assert scheduler.commit_points() == {}  # offset 1 still runs
    handler.release(1)
    await settle()
    assert scheduler.commit_points() == {"p0": 3}  # 3 runs now
    handler.release(3)
    await settle()
    assert scheduler.commit_points() == {"p0": 5}
    assert handler.started == [1, 3]


async def test_commit_points_are_per_partition():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.submit(work("a", 5, partition="p0"))
    scheduler.submit(work("b", 8, partition="p1"))
    await settle()
    scheduler.commit_points()
    handler.release(8)
    await settle()
    assert scheduler.commit_points() == {"p1": 9}
    handler.release(5)
    await settle()
    assert scheduler.commit_points() == {"p0": 6}


async def test_a_failed_commit_is_reported_again():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.submit(work("a", 0))
    handler.release(0)
    await settle()
    assert scheduler.commit_points() == {"p0": 1}
    scheduler.forget_commits(["p0"])
    assert scheduler.commit_points() == {"p0": 1}


async def test_the_cap_counts_waiting_records_and_frees_room_as_they_finish():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=3)
    scheduler.submit(work("a", 0))
    scheduler.submit(work("a", 1))  # waits behind offset 0, but is held all the same
    assert scheduler.room == 1 and not scheduler.full
    scheduler.submit(work("b", 2))
    assert scheduler.full and scheduler.room == 0
    assert await scheduler.wait_for_room(0.05) is False  # the consumer stays paused
    waiter = asyncio.create_task(scheduler.wait_for_room(5))
    handler.release(2)
    assert await waiter is True
    assert scheduler.room == 1
    handler.release(0, 1)
    assert await scheduler.drain(1)
    assert scheduler.held == 0


async def test_a_failing_handler_is_retried_in_place_and_holds_only_its_key(monkeypatch):
    monkeypatch.setattr(keyed, "RETRY_FIRST_S", 0.01)
    attempts: dict[str, int] = defaultdict(int)
    order: list[tuple[str, int]] = []

    async def flaky(payload: tuple[str, int]) -> None:
        key, offset = payload
        attempts[f"{key}{offset}"] += 1
        if key == "a" and offset == 0 and attempts["a0"] < 3:
            raise ConnectionError("broker away")
        order.append(payload)

    scheduler = KeyedScheduler(flaky, max_in_flight=10)
    scheduler.submit(work("a", 0))
    scheduler.submit(work("a", 1))
    scheduler.submit(work("b", 2))
    assert await scheduler.drain(2)
    assert attempts["a0"] == 3
    assert order.index(("a", 0)) < order.index(("a", 1))  # the retry kept the goal's order
    assert order[0] == ("b", 2)  # the other goal did not wait for the retries
    assert scheduler.commit_points() == {"p0": 3}


async def test_revoke_drops_waiting_records_and_commits_what_finished():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.submit(work("a", 0, partition="p0"))
    scheduler.submit(work("a", 1, partition="p0"))
    scheduler.submit(work("b", 5, partition="p1"))
    await settle()
    revoking = asyncio.create_task(scheduler.revoke(["p0"], timeout=5))
    await settle()
    assert not revoking.done()  # offset 0 of p0 still runs
    handler.release(0)
    points = await revoking
    assert points == {"p0": 1}  # offset 1 never started: the new owner reads it again
    assert 1 not in handler.started
    assert scheduler.held == 1  # only p1's record is left
    assert "p0" not in scheduler.commit_points()
    await scheduler.close()


async def test_revoke_gives_up_on_a_hanging_record_without_committing_it():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=10)
    scheduler.submit(work("a", 0))
    await settle()
    assert await scheduler.revoke(["p0"], timeout=0.05) == {"p0": 0}
    await scheduler.close()


async def test_a_crash_mid_batch_leaves_unfinished_offsets_uncommitted():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=100)
    for offset in range(10):
        scheduler.submit(work(f"goal-{offset % 3}", offset))
    await settle()
    handler.release(0, 1, 3, 4, 5)  # 2 hangs: 3, 4 and 5 finish beyond it, 6… are not reached
    await settle()
    committed = scheduler.commit_points()["p0"]
    await scheduler.close()  # the process dies here
    assert committed == 2
    unfinished = set(range(10)) - set(handler.finished)
    assert min(unfinished) >= committed  # everything unfinished is redelivered from the commit point
    assert scheduler.commit_points() == {}  # cancelled work never counts as finished


def test_the_cap_must_be_positive():
    with pytest.raises(ValueError):
        KeyedScheduler(lambda payload: asyncio.sleep(0), max_in_flight=0)


async def test_a_partition_far_ahead_of_its_commit_point_is_reported_backlogged():
    handler = Gated()
    scheduler = KeyedScheduler(handler, max_in_flight=100)
    scheduler.submit(work("hangs", 0, partition="p0"))
    for offset in range(1, 5):
        scheduler.submit(work(f"quick-{offset}", offset, partition="p0"))
    scheduler.submit(work("other", 0, partition="p1"))
    handler.release(1, 2, 3, 4)
    await settle()
    assert scheduler.held == 2  # few records held, but p0's commit point is stuck at offset 0
    assert scheduler.backlogged(limit=5) == {"p0"}
    assert scheduler.backlogged(limit=6) == set()
    handler.release(0)
    await settle()
    assert scheduler.backlogged(limit=1) == set()
    await scheduler.close()
