"""Offsets are committed only after the handler's state is stored and its events published."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.client import GoalrailClient
from shared.events import Event, GoalSubmitted, Topic
from shared.service import ServiceRuntime
from shared.settings import Settings

pytestmark = pytest.mark.integration


async def _committed(bootstrap: str, group: str) -> dict[int, int]:
    """The group's committed offsets on goals.submitted, read by OffsetFetch without joining."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(Topic.GOALS_SUBMITTED.value) or set()
        offsets = {p: await consumer.committed(TopicPartition(Topic.GOALS_SUBMITTED.value, p)) for p in partitions}
    finally:
        await consumer.stop()
    return {p: o for p, o in offsets.items() if o is not None}


async def test_offset_is_committed_only_after_the_handler_returns(broker):
    settings = Settings(kafka_bootstrap=broker.bootstrap, kafka_session_timeout_ms=6000)
    runtime = ServiceRuntime("commit-probe", settings)
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow_handler(event: Event) -> list[Event]:
        entered.set()
        await release.wait()
        handled.append(event.id)
        return []

    async with runtime.serving([Topic.GOALS_SUBMITTED], slow_handler):
        async with GoalrailClient(broker.bootstrap) as client:
            submitted = await client.submit("Prepare the Q3 sales report", requester="t", goal_id="commit-goal")
        await asyncio.wait_for(entered.wait(), 30)
        partition = await _partition_of(broker.bootstrap, submitted)

        await asyncio.sleep(6.0)  # past aiokafka's 5 s auto-commit interval: a premature commit would show
        assert _committed_past(await _committed(broker.bootstrap, "commit-probe"), partition) is False

        release.set()
        for _ in range(100):
            if _committed_past(await _committed(broker.bootstrap, "commit-probe"), partition):
                break
            await asyncio.sleep(0.1)
        assert handled == [submitted.id]
        assert _committed_past(await _committed(broker.bootstrap, "commit-probe"), partition) is True


def _committed_past(committed: dict[int, int], partition: int) -> bool:
    return committed.get(partition, -1) >= 1  # the goal is offset 0 of its partition


async def _partition_of(bootstrap: str, submitted: GoalSubmitted) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(Topic.GOALS_SUBMITTED.value) or set()
        tps = [TopicPartition(Topic.GOALS_SUBMITTED.value, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        (partition,) = [tp.partition for tp, end in ends.items() if end == 1]
        return partition
    finally:
        await consumer.stop()
