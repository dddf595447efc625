"""The consume guard as the services build it (ServiceRuntime.guard), fed the raw Kafka records
of FastStream's in-memory TestKafkaBroker: bad input ends on `<topic>.dlq` with an EventRejected, good input reaches the
handler and its events are published keyed by goal id."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from faststream.kafka import TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry.sdk.trace import TracerProvider

from shared.events import (
    Binding,
    ErrorCode,
    EventRejected,
    GoalSpec,
    GoalSubmitted,
    Step,
    StepDispatched,
    StepReady,
    Topic,
    parse_event,
    to_wire,
)
from shared.bus import BrokerSink
from shared.service import ServiceRuntime
from shared.settings import Settings

WATCHED = ("steps.ready.dlq", "events.rejected", "steps.dispatched")


def ready_event(goal_id: str = "goal-7") -> StepReady:
    root = GoalSubmitted(id=f"{goal_id}:submitted", goal_id=goal_id, tenant="acme",
                         goal=GoalSpec(text="abc", requester="r"))
    return root.derive(StepReady, f"{goal_id}:s:1:ready", "planner", plan_id=f"{goal_id}:plan",
                       step=Step(id="s", task_type="act", tool="noop.echo"))


class Harness:
    """A router-like service with a scripted handler, plus listeners on the topics it writes."""

    def __init__(self, attempts: int | None = None, fail: bool = False) -> None:
        self.calls: list = []
        self.fail = fail
        self.seen: dict[str, list] = defaultdict(list)
        options = {} if attempts is None else {"handler_attempts": attempts}
        self.settings = Settings(kafka_bootstrap="127.0.0.1:9", mongo_url="memory://", **options)
        self.runtime = ServiceRuntime("router", self.settings)
        guard = self.runtime.guard(self.handle, BrokerSink(self.runtime.broker))  # the in-memory broker

        # the services' KeyedConsumer hands the guard aiokafka's ConsumerRecord, as this does
        @self.runtime.broker.subscriber(Topic.STEPS_READY.value, group_id="router")
        async def consume(message: KafkaMessage) -> None:
            await guard(message.raw_message)

        for topic in WATCHED:
            self._listen(topic)

    def _listen(self, topic: str) -> None:
        @self.runtime.broker.subscriber(topic, group_id=f"test-{topic}")
        async def listen(message: KafkaMessage) -> None:
            self.seen[topic].append(message)

    async def handle(self, event):
        self.calls.append(event)
        if self.fail:
            raise RuntimeError("database is on fire")
        return [event.derive(StepDispatched, f"{event.goal_id}:s:1:dispatched", "router", plan_id=event.plan_id,
                             step=event.step, binding=Binding(kind="tool", tool="noop.echo", reason="t"))]


@pytest.fixture(autouse=True)
def quiet_tracing(monkeypatch):
    # ServiceRuntime installs its tracer provider globally; keep tests from fighting over it
    monkeypatch.setattr("shared.service.setup_tracing", lambda name, endpoint: TracerProvider())
    monkeypatch.delenv("GOALRAIL_HANDLER_ATTEMPTS", raising=False)


async def test_valid_event_reaches_the_handler_and_its_events_are_published():
    harness = Harness()
    event = ready_event()
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(to_wire(event), topic="steps.ready", key=b"goal-7")
    assert harness.calls == [event]
    (out,) = harness.seen["steps.dispatched"]
    dispatched = parse_event(out.body)
    assert isinstance(dispatched, StepDispatched) and dispatched.causation_id == event.id
    assert out.raw_message.key == b"goal-7"
    assert out.headers["ce_type"] == "goalrail.step.dispatched"
    assert out.headers["ce_id"] == "goal-7:s:1:dispatched"
    assert out.headers["goalrail-binding-kind"] == "tool"  # the router passes a tool's result by on it
    assert harness.seen["steps.ready.dlq"] == [] and harness.seen["events.rejected"] == []


async def test_malformed_json_goes_to_the_dlq_with_reason_headers():
    harness = Harness()
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(b"{not json", topic="steps.ready", key=b"k")
    assert harness.calls == []
    (dead,) = harness.seen["steps.ready.dlq"]
    assert dead.headers["goalrail-dlq-code"] == "MALFORMED_EVENT"
    assert dead.headers["goalrail-dlq-reason"].startswith("message is not valid JSON")
    assert dead.headers["goalrail-dlq-service"] == "router"
    assert dead.headers["goalrail-dlq-source"] == "steps.ready:0:0"
    body = json.loads(dead.body)
    assert body["original"] == "{not json" and body["source_topic"] == "steps.ready"
    assert body["error"]["code"] == "MALFORMED_EVENT" and body["rejected_by"] == "router"
    assert dead.raw_message.key == b"k"
    # no goal id could be read: nothing to tell the goal's owner
    assert harness.seen["events.rejected"] == []


async def test_invalid_event_with_a_goal_id_also_emits_event_rejected():
    harness = Harness()
    body = json.loads(to_wire(ready_event()))
    del body["plan_id"]
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(json.dumps(body).encode(), topic="steps.ready", key=b"goal-7")
    assert harness.calls == []
    (dead,) = harness.seen["steps.ready.dlq"]
    assert dead.headers["goalrail-dlq-code"] == "INVALID_EVENT"
    assert "plan_id" in dead.headers["goalrail-dlq-reason"]
    (message,) = harness.seen["events.rejected"]
    rejected = parse_event(message.body)
    assert isinstance(rejected, EventRejected)
    assert (rejected.goal_id, rejected.tenant, rejected.rejected_by) == ("goal-7", "acme", "router")
    assert (rejected.source_topic, rejected.partition, rejected.offset) == ("steps.ready", 0, 0)
    assert rejected.rejected_type == "goalrail.step.ready"
    assert rejected.error.code is ErrorCode.INVALID_EVENT
    assert rejected.error.details["errors"][0]["field"].endswith("plan_id")
    assert rejected.id == "goal-7:rejected:router:steps.ready:0:0"
    assert message.raw_message.key == b"goal-7"


async def test_event_on_the_wrong_topic_is_rejected():
    harness = Harness()
    goal = GoalSubmitted(goal_id="goal-8", tenant="acme", goal=GoalSpec(text="abc", requester="r"))
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(to_wire(goal), topic="steps.ready", key=b"goal-8")
    assert harness.calls == []
    (dead,) = harness.seen["steps.ready.dlq"]
    assert dead.headers["goalrail-dlq-code"] == "INVALID_EVENT"
    assert "does not belong on steps.ready" in dead.headers["goalrail-dlq-reason"]
    (message,) = harness.seen["events.rejected"]
    rejected = parse_event(message.body)
    assert rejected.goal_id == "goal-8" and rejected.rejected_type == "goalrail.goal.submitted"
    assert rejected.error.details == {"event_id": goal.id}


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_its_attempts():
    harness = Harness(attempts=2, fail=True)
    event = ready_event()
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(to_wire(event), topic="steps.ready", key=b"goal-7")
    assert len(harness.calls) == harness.settings.handler_attempts == 2
    (dead,) = harness.seen["steps.ready.dlq"]
    assert dead.headers["goalrail-dlq-code"] == "HANDLER_FAILED"
    assert "after 2 tries: database is on fire" in dead.headers["goalrail-dlq-reason"]
    assert json.loads(dead.body)["original"] == to_wire(event).decode()
    (message,) = harness.seen["events.rejected"]
    rejected = parse_event(message.body)
    assert rejected.error.code is ErrorCode.HANDLER_FAILED
    assert rejected.error.details == {"event_id": event.id, "exception": "RuntimeError"}
    assert harness.seen["steps.dispatched"] == []


async def test_default_settings_try_a_failing_handler_three_times():
    harness = Harness(fail=True)
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(to_wire(ready_event()), topic="steps.ready", key=b"goal-7")
    assert harness.settings.handler_attempts == 3  # the default
    assert len(harness.calls) == 3
    assert [m.headers["goalrail-dlq-code"] for m in harness.seen["steps.ready.dlq"]] == ["HANDLER_FAILED"]


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"\xff\xfe{", "MALFORMED_EVENT"), (b"[1, 2]", "INVALID_EVENT"), (b'{"goal_id": 5}', "INVALID_EVENT")],
)
async def test_unreadable_messages_are_dead_lettered_without_a_goal(raw, code):
    harness = Harness()
    async with TestKafkaBroker(harness.runtime.broker) as broker:
        await broker.publish(raw, topic="steps.ready")
    assert harness.calls == []
    (dead,) = harness.seen["steps.ready.dlq"]
    assert dead.headers["goalrail-dlq-code"] == code
    assert json.loads(dead.body)["original"] == raw.decode("utf-8", errors="replace")
    assert harness.seen["events.rejected"] == []  # no usable goal id: nobody to tell
