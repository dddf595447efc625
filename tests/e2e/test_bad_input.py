"""Bad input on goals.submitted: dead-lettered with the reason, a typed error event, a failed
outcome where the goal is known, and the next good goal still completes."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from shared.client import EventStream, GoalrailClient
from shared.events import EventRejected, GoalCompleted, GoalFailed, Topic

pytestmark = pytest.mark.e2e


async def test_malformed_and_invalid_goals_go_to_the_dlq_and_the_partition_moves_on(shared_stack):
    stack = shared_stack.stack
    invalid_goal_id = f"bad-{uuid.uuid4().hex[:8]}"
    malformed = b'{"type": "goalrail.goal.submitted", "goal_id": '  # cut off mid-JSON
    invalid = json.dumps(
        {"type": "goalrail.goal.submitted", "id": f"{invalid_goal_id}:submitted", "goal_id": invalid_goal_id,
         "tenant": "acme", "goal": {"text": "", "requester": "x"}}
    ).encode()

    dlq = EventStream(stack.bootstrap, [Topic.GOALS_SUBMITTED.dlq])
    rejected = EventStream(stack.bootstrap, [Topic.EVENTS_REJECTED.value])
    await dlq.start()
    await rejected.start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        async with GoalrailClient(stack.bootstrap, tenant="acme") as client:
            await client.watch_outcomes()
            # all three share one key, hence one partition: the good goal must get past the bad ones
            await producer.send_and_wait(Topic.GOALS_SUBMITTED.value, malformed, key=invalid_goal_id.encode())
            await producer.send_and_wait(Topic.GOALS_SUBMITTED.value, invalid, key=invalid_goal_id.encode())
            good = await client.submit("Prepare the Q1 sales report", requester="cfo", goal_id=invalid_goal_id + "-ok")
            failed = await client.wait_for_outcome(invalid_goal_id, timeout=60)
            completed = await client.wait_for_outcome(good.goal_id, timeout=60)

        # every consumer of goals.submitted (planner and auditor) dead-letters under its own name
        dead = await _collect(dlq, 4)
        errors = await _collect(rejected, 2, lambda e: e.goal_id == invalid_goal_id)
    finally:
        await producer.stop()
        await dlq.stop()
        await rejected.stop()

    assert isinstance(completed, GoalCompleted)

    assert isinstance(failed, GoalFailed)
    assert failed.error.code == "INVALID_EVENT"
    assert "goal.text" in failed.error.message

    assert sorted(m.headers["goalrail-dlq-service"] for m in dead) == ["auditor", "auditor", "planner", "planner"]
    dead = [m for m in dead if m.headers["goalrail-dlq-service"] == "planner"]
    bodies = [json.loads(m.raw) for m in dead]
    assert [m.headers["goalrail-dlq-code"] for m in dead] == ["MALFORMED_EVENT", "INVALID_EVENT"]
    assert all(m.headers["goalrail-dlq-reason"] == b["reason"][:500] for m, b in zip(dead, bodies))
    assert [b["error"]["code"] for b in bodies] == ["MALFORMED_EVENT", "INVALID_EVENT"]
    assert bodies[0]["original"] == malformed.decode()
    assert bodies[1]["source_topic"] == "goals.submitted" and bodies[1]["rejected_by"] == "planner"
    assert all(b["reason"] for b in bodies)

    assert sorted(m.event.rejected_by for m in errors) == ["auditor", "planner"]
    (error_event,) = [m.event for m in errors if m.event.rejected_by == "planner"]
    assert isinstance(error_event, EventRejected)
    assert error_event.error.code == "INVALID_EVENT"
    assert error_event.source_topic == "goals.submitted"
    assert error_event.offset == bodies[1]["offset"]


async def _collect(stream: EventStream, count: int, keep=lambda e: True, timeout: float = 20):
    found = []

    async def read():
        async for message in stream:
            if message.event is None or keep(message.event):
                found.append(message)
                if len(found) == count:
                    return

    await asyncio.wait_for(read(), timeout)
    return found
