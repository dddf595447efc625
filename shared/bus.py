"""Kafka plumbing shared by the services: broker factory, topic creation, keyed publishing and
the consume guard that turns bad input into a DLQ record plus a typed error event.

Guarantee: a handler's outgoing events are published (and acknowledged by the broker) before the
guard returns, and the consumer commits the offset only after that (shared/consumer.py), so a
crash anywhere before the commit means redelivery, never loss.

Two ways out: `KafkaPublisher` (the services' hot path: aiokafka's producer with one
`<topic> publish` span per event) and `BrokerSink` (a FastStream broker: the client, the
operators' HTTP API, and FastStream's in-memory TestKafkaBroker in unit tests).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from faststream.kafka import KafkaBroker
from opentelemetry import propagate, trace
from opentelemetry.semconv.trace import SpanAttributes
from opentelemetry.trace import Status, StatusCode, TracerProvider
from pydantic import ValidationError
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from shared.events import (
    ErrorCode,
    Event,
    EventRejected,
    Topic,
    TypedError,
    parse_event,
    to_wire,
)
from shared.settings import Settings
from shared.telemetry.tracing import current_goal_id, never_records

log = logging.getLogger("goalrail.bus")

Handler = Callable[[Event], Awaitable[Sequence[Event]]]

RETRY_WAIT_S = 0.2  # first wait between tries of a failing handler; doubles, at most 2 s

ALL_TOPICS: tuple[str, ...] = tuple(t.value for t in Topic) + tuple(t.dlq for t in Topic)


# One partition's events waiting for the produce request in flight to be acknowledged.
# aiokafka's default (16 KiB) holds about 16 events: the rest of a burst (a fetch's worth of
# handlers publishing at once) waited for the request in flight, then went in more, smaller
# requests. In `make bench` this cut the services' CPU per goal by about a fifth and the
# broker's by half (interleaved runs); Kafka's default message.max.bytes (1 MiB) takes it.
PRODUCER_BATCH_BYTES = 256 * 1024


def producer_options(settings: Settings) -> dict[str, Any]:
    """How every Goalrail producer writes: acknowledged by all replicas, idempotent where the
    broker supports it (Tansu does not), a burst's events in one request."""
    return {"acks": "all", "enable_idempotence": settings.kafka_idempotence, "max_batch_size": PRODUCER_BATCH_BYTES}


def make_broker(settings: Settings, tracer_provider: TracerProvider | None = None) -> KafkaBroker:
    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

    middlewares = [KafkaTelemetryMiddleware(tracer_provider=tracer_provider)]
    return KafkaBroker(
        settings.kafka_bootstrap,
        **producer_options(settings),
        middlewares=middlewares,
        logger=None,
    )


async def ensure_topics(bootstrap: str, partitions: int, topics: Iterable[str] = ALL_TOPICS) -> None:
    """Create the topics if missing (idempotent; every service may call it at start-up)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created them first
    finally:
        await admin.close()


async def publish(broker: KafkaBroker, events: Iterable[Event]) -> None:
    """Publish each event to its topic, keyed by goal id so one goal stays on one partition, and
    wait until the broker acknowledged all of them. The events are handed to the producer in
    order (so one partition gets them in order) and acknowledged together: one round trip for
    a handler's whole outbox, not one per event."""
    pending = [
        await broker.publish(
            to_wire(event),
            topic=event.topic.value,
            key=event.goal_id.encode(),
            headers=event_headers(event),
            no_confirm=True,
        )
        for event in events
    ]
    acks = [ack for ack in pending if inspect.isawaitable(ack)]  # the in-memory TestKafkaBroker returns none
    if acks:
        await asyncio.gather(*acks)


BINDING_KIND_HEADER = "goalrail-binding-kind"


def event_headers(event: Event) -> dict[str, str]:
    headers = {"ce_type": event.type, "ce_id": event.id, "content-type": "application/json"}
    binding = getattr(event, "binding", None)
    if binding is not None:
        # lets a consumer that only cares about model calls (the router's learning) pass a
        # tool's result by without parsing it
        headers[BINDING_KIND_HEADER] = binding.kind
    return headers


class EventSink(Protocol):
    """Where the consume guard sends a handler's events and the dead letters."""

    async def publish(self, events: Iterable[Event]) -> None: ...

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]) -> None: ...


class BrokerSink:
    """A FastStream broker as an EventSink (its OpenTelemetry middleware makes the spans)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker

    async def publish(self, events: Iterable[Event]) -> None:
        await publish(self.broker, events)

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]) -> None:
        await self.broker.publish(value, topic=topic, key=key, headers=headers)


class KafkaPublisher:
    """The services' producer: aiokafka directly, one `<topic> publish` PRODUCER span per event
    whose context travels in the headers, so the consumer's `<topic> process` span is its child.

    FastStream's publish pipeline costs about a quarter of a millisecond per event on top of
    aiokafka (a middleware object per call, a zero-length `create` span beside the publish span,
    metrics); with a service handling thousands of events a second that is a visible share of
    its CPU, so the hot path sends on the producer itself.
    """

    def __init__(self, settings: Settings, tracer: trace.Tracer) -> None:
        self._settings = settings
        self._tracer = tracer
        self._spans_dropped = never_records(tracer)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._settings.kafka_bootstrap,
                                          **producer_options(self._settings))
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, events: Iterable[Event]) -> None:
        """Hand every event to the producer in order (one partition gets them in order), then
        wait for all acknowledgements together: one round trip for a handler's whole outbox."""
        await self._deliver([(event.topic.value, to_wire(event), event.goal_id.encode(), event_headers(event))
                             for event in events])

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: dict[str, str]) -> None:
        await self._deliver([(topic, value, key, headers)])  # a dead letter keeps the original key's bytes

    async def _deliver(self, messages: list[tuple[str, bytes, bytes | None, dict[str, str]]]) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the publisher is not started")
        in_flight: list[tuple[trace.Span, asyncio.Future]] = []
        # with spans dropped, the span being handled carries the trace on (see never_records)
        spans = not self._spans_dropped or not trace.get_current_span().get_span_context().is_valid
        try:
            for topic, value, key, headers in messages:
                span = trace.INVALID_SPAN
                if spans:
                    span = self._tracer.start_span(f"{topic} publish", kind=trace.SpanKind.PRODUCER,
                                                   attributes=_publish_attributes(topic, key, headers))
                    propagate.inject(headers, context=trace.set_span_in_context(span))
                else:
                    propagate.inject(headers)
                try:
                    ack = await producer.send(topic, value, key=key,
                                              headers=[(name, text.encode()) for name, text in headers.items()])
                except BaseException as exc:
                    _failed(span, exc)
                    span.end()
                    raise
                in_flight.append((span, ack))
            await asyncio.gather(*(ack for _, ack in in_flight))
        except BaseException as exc:
            for span, ack in in_flight:
                if not ack.done() or ack.cancelled() or ack.exception() is not None:
                    _failed(span, exc)
            raise
        finally:
            for span, _ in in_flight:
                span.end()


def _publish_attributes(topic: str, key: bytes | None, headers: dict[str, str]) -> dict[str, str]:
    attributes = {
        SpanAttributes.MESSAGING_SYSTEM: "kafka",
        SpanAttributes.MESSAGING_OPERATION: "publish",
        SpanAttributes.MESSAGING_DESTINATION_NAME: topic,
    }
    if key is not None:
        attributes[SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY] = key.decode(errors="replace")
    if "ce_id" in headers:
        attributes[SpanAttributes.MESSAGING_MESSAGE_ID] = headers["ce_id"]
    return attributes


def _failed(span: trace.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _goal_identity(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """Best-effort goal id, tenant and type from a message that failed validation."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None
    goal_id, tenant, kind = body.get("goal_id"), body.get("tenant"), body.get("type")
    return (
        goal_id if isinstance(goal_id, str) and goal_id else None,
        tenant if isinstance(tenant, str) and tenant else None,
        kind if isinstance(kind, str) else None,
    )


class ConsumeGuard:
    """Parses a raw Kafka message, runs the handler with retries, publishes what it returns;
    anything that cannot be processed goes to `<topic>.dlq` and an EventRejected is emitted."""

    def __init__(self, sink: EventSink, service: str, handler: Handler, attempts: int = 3) -> None:
        self.sink = sink
        self.service = service
        self.handler = handler
        self.attempts = attempts

    async def __call__(self, record: ConsumerRecord) -> None:
        raw: bytes = record.value or b""
        try:
            event = parse_event(raw)
        except ValidationError as exc:
            await self._reject(raw, record, _validation_error(raw, exc))
            return
        current_goal_id.set(event.goal_id)
        if event.topic.value != record.topic:
            error = TypedError(
                code=ErrorCode.INVALID_EVENT,
                message=f"{event.type} does not belong on {record.topic} (its topic is {event.topic.value})",
                details={"event_id": event.id},
            )
            await self._reject(raw, record, error)
            return
        try:
            outgoing = await self._handle(event)
        except Exception as exc:  # noqa: BLE001 — a poison event must not block the partition
            log.exception("handler failed for %s %s", event.type, event.id)
            error = TypedError(
                code=ErrorCode.HANDLER_FAILED,
                message=f"{self.service} could not process {event.type} after {self.attempts} tries: {exc}",
                details={"event_id": event.id, "exception": type(exc).__name__},
            )
            await self._reject(raw, record, error)
            return
        await self.sink.publish(outgoing)

    async def _handle(self, event: Event) -> Sequence[Event]:
        """The handler's events, trying it up to `attempts` times in all. The first try runs
        bare: nearly every event succeeds at once, and a retry loop per event is measurable."""
        try:
            return await self.handler(event)
        except Exception as exc:  # noqa: BLE001 — retried below, dead-lettered by the caller in the end
            if self.attempts == 1:
                raise
            log.info("handler failed for %s %s (%s: %s); trying again", event.type, event.id, type(exc).__name__, exc)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.attempts - 1),
            wait=wait_exponential(multiplier=RETRY_WAIT_S, max=2),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    await asyncio.sleep(RETRY_WAIT_S)  # the wait after the bare first try
                return await self.handler(event)
        raise AssertionError("unreachable: tenacity reraises the last failure")

    async def _reject(self, raw: bytes, record: Any, error: TypedError) -> None:
        topic, partition, offset = record.topic, record.partition, record.offset
        log.warning("dead-lettering %s[%s]@%s: %s", topic, partition, offset, error.message)
        body = {
            "reason": error.message,
            "error": error.model_dump(mode="json"),
            "rejected_by": self.service,
            "source_topic": topic,
            "partition": partition,
            "offset": offset,
            "original": raw.decode("utf-8", errors="replace"),
        }
        await self.sink.send(
            f"{topic}.dlq",
            json.dumps(body).encode(),
            record.key,
            {
                "goalrail-dlq-reason": error.message[:500],
                "goalrail-dlq-code": error.code.value,
                "goalrail-dlq-source": f"{topic}:{partition}:{offset}",
                "goalrail-dlq-service": self.service,
            },
        )
        goal_id, tenant, kind = _goal_identity(raw)
        if goal_id is None:
            return
        rejected = EventRejected(
            id=f"{goal_id}:rejected:{self.service}:{topic}:{partition}:{offset}",
            source=self.service,
            goal_id=goal_id,
            tenant=tenant or "unknown",
            rejected_by=self.service,
            source_topic=topic,
            partition=partition,
            offset=offset,
            rejected_type=kind,
            error=error,
        )
        await self.sink.publish([rejected])


def _validation_error(raw: bytes, exc: ValidationError) -> TypedError:
    malformed = any(err["type"] in {"json_invalid", "json_type"} for err in exc.errors())
    if malformed:
        return TypedError(
            code=ErrorCode.MALFORMED_EVENT,
            message=f"message is not valid JSON: {exc.errors()[0]['msg']}",
            details={"size": len(raw)},
        )
    problems = [
        {"field": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems[:5])
    return TypedError(
        code=ErrorCode.INVALID_EVENT,
        message=f"event does not match the schema: {summary}",
        details={"errors": problems},
    )
