"""Concurrency across goals on the real broker: a goal stuck in a slow tool does not hold another
goal's step, even on the same partition (the keyed consumer orders per goal, not per partition)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from functools import partial

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.sdk.trace import TracerProvider

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from services.executor.execution import StepRunner  # noqa: E402
from services.executor.handlers import ExecutorDeps, handle  # noqa: E402
from shared.events import Topic, parse_event, to_wire  # noqa: E402
from shared.service import ServiceRuntime  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.store import open_database  # noqa: E402
from tests.integration.test_tool_sources import NoModels, dispatched, failing_tools  # noqa: E402
from tests.integration.tool_servers import LoopbackServer, failing_api  # noqa: E402

pytestmark = pytest.mark.integration


async def test_a_slow_tool_does_not_hold_another_goal_on_the_same_partition(broker):
    app, calls = failing_api(slow_s=4.0)
    with LoopbackServer(app) as upstream:
        settings = Settings(kafka_bootstrap=broker.bootstrap, kafka_session_timeout_ms=6000)
        runtime = ServiceRuntime("executor-probe", settings)
        runner = StepRunner(
            tools=failing_tools(upstream, operations={"slow": {"timeout_s": 10}}), models=NoModels(),
            http=httpx.AsyncClient(), tracer=TracerProvider().get_tracer("t"), tool_config={}, attempts=1,
        )
        deps = ExecutorDeps(open_database("memory://", f"exec_{uuid.uuid4().hex}")["executions"], runner)
        async with runtime.serving([Topic.STEPS_DISPATCHED], partial(handle, deps=deps)):
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
            results = AIOKafkaConsumer(Topic.STEPS_RESULTS.value, bootstrap_servers=broker.bootstrap,
                                       auto_offset_reset="earliest", group_id=f"probe-{uuid.uuid4().hex}")
            await producer.start()
            await results.start()
            try:
                slow = dispatched("up.slow", {}, goal="g-slow", step="wait")
                quick = dispatched("up.get_thing", {"thing_id": "x"}, goal="g-quick", step="look")
                await producer.send_and_wait(Topic.STEPS_DISPATCHED.value, to_wire(slow), key=b"g-slow", partition=0)
                for _ in range(300):  # until the slow call is in flight
                    if calls["slow"]:
                        break
                    await asyncio.sleep(0.05)
                assert calls["slow"] == 1
                sent = time.monotonic()
                await producer.send_and_wait(Topic.STEPS_DISPATCHED.value, to_wire(quick), key=b"g-quick", partition=0)
                arrived: list[tuple[str, float]] = []
                while len(arrived) < 2:
                    batch = await asyncio.wait_for(results.getmany(timeout_ms=200), 30)
                    for records in batch.values():
                        for record in records:
                            event = parse_event(record.value)
                            arrived.append((event.goal_id, time.monotonic() - sent))
                assert [goal for goal, _ in arrived] == ["g-quick", "g-slow"]
                assert arrived[0][1] < 3.0  # not queued behind the 4 s call before it on its partition
            finally:
                await results.stop()
                await producer.stop()
