"""shared.bus.KafkaPublisher against the real broker: a handler's events arrive in order on their
goal's partition with the envelope headers and the trace context of their own publish span."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from shared.bus import KafkaPublisher
from shared.events import GoalSpec, GoalSubmitted, Topic
from shared.settings import Settings
from shared.telemetry.tracing import never_records

pytestmark = pytest.mark.integration


def submitted(goal_id: str, seq: int) -> GoalSubmitted:
    return GoalSubmitted(id=f"{goal_id}:submitted:{seq}", source="publisher-test", goal_id=goal_id, tenant="t",
                         goal=GoalSpec(text="Publish in order", requester="test"))


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def read(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(20):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_events_arrive_in_order_with_headers_and_their_publish_spans_context(broker):
    provider, exporter = tracing()
    publisher = KafkaPublisher(Settings(kafka_bootstrap=broker.bootstrap), provider.get_tracer("test"))
    await publisher.start()
    try:
        events = [submitted(goal, seq) for seq in range(5) for goal in ("g-a", "g-b")]
        await publisher.publish(events)
    finally:
        await publisher.stop()

    records = await read(broker.bootstrap, Topic.GOALS_SUBMITTED.value, len(events))
    by_goal: dict[str, list] = {}
    for record in records:
        by_goal.setdefault(record.key.decode(), []).append(record)
    for goal, received in by_goal.items():
        assert len({r.partition for r in received}) == 1  # one goal, one partition
        assert [dict(r.headers)["ce_id"].decode() for r in sorted(received, key=lambda r: r.offset)] == [
            f"{goal}:submitted:{seq}" for seq in range(5)]
    assert set(by_goal) == {"g-a", "g-b"}

    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    assert len(spans) == len(events)
    for record in records:
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["ce_type"] == "goalrail.goal.submitted"
        assert headers["content-type"] == "application/json"
        _, trace_id, span_id, _ = headers["traceparent"].split("-")
        span = spans[span_id]
        assert format(span.context.trace_id, "032x") == trace_id
        assert span.name == "goals.submitted publish" and span.kind == SpanKind.PRODUCER
        assert span.attributes["messaging.message.id"] == headers["ce_id"]
        assert span.attributes["messaging.kafka.message.key"] == record.key.decode()


async def test_a_send_that_fails_marks_its_span_and_raises(broker):
    provider, exporter = tracing()
    publisher = KafkaPublisher(Settings(kafka_bootstrap=broker.bootstrap), provider.get_tracer("test"))
    await publisher.start()
    try:
        with pytest.raises(Exception):
            await publisher.send("goals.submitted", b"x" * (2 * 1024 * 1024), b"g-big", {})  # over the size limit
    finally:
        await publisher.stop()
    [span] = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR


async def test_publishing_before_start_is_refused(broker):
    publisher = KafkaPublisher(Settings(kafka_bootstrap=broker.bootstrap), TracerProvider().get_tracer("test"))
    with pytest.raises(RuntimeError, match="not started"):
        await publisher.publish([submitted("g", 0)])


async def test_a_dead_letter_keeps_the_original_key_and_value_bytes(broker):
    provider, _ = tracing()
    publisher = KafkaPublisher(Settings(kafka_bootstrap=broker.bootstrap), provider.get_tracer("test"))
    await publisher.start()
    try:
        await publisher.send(Topic.GOALS_SUBMITTED.dlq, b"\xff not json", b"\xfe\xff-key", {"goalrail-dlq-code": "X"})
    finally:
        await publisher.stop()
    [record] = await read(broker.bootstrap, Topic.GOALS_SUBMITTED.dlq, 1)
    assert (record.key, record.value) == (b"\xfe\xff-key", b"\xff not json")
    assert dict(record.headers)["goalrail-dlq-code"] == b"X"


async def test_with_spans_dropped_the_trace_goes_on_from_the_span_being_handled(broker):
    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    assert never_records(tracer)
    publisher = KafkaPublisher(Settings(kafka_bootstrap=broker.bootstrap), tracer)
    handled = trace.NonRecordingSpan(trace.SpanContext(0x5EED, 0xCAFE, is_remote=True))
    await publisher.start()
    try:
        with trace.use_span(handled):
            await publisher.publish([submitted("g-handled", 0)])
        await publisher.publish([submitted("g-alone", 0)])  # outside any trace: one of its own
    finally:
        await publisher.stop()
    records = await read(broker.bootstrap, Topic.GOALS_SUBMITTED.value, 2)
    traceparents = {r.key.decode(): dict(r.headers)["traceparent"].decode() for r in records}
    assert traceparents["g-handled"].split("-")[1:3] == [format(0x5EED, "032x"), format(0xCAFE, "016x")]
    assert int(traceparents["g-alone"].split("-")[1], 16) not in (0, 0x5EED)
