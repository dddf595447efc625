"""Kafka plumbing shared by the services: broker factory, topic creation, keyed publishing and
the consume guard that turns bad input into a DLQ record plus a typed error event.

Guarantee: a handler's outgoing events are published (and acknowledged by the broker) before the
guard returns, and the consumer commits the offset only after that (shared/consumer.py), so a
crash anywhere before the commit means redelivery, never loss.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord
from faststream.kafka import KafkaBroker
from opentelemetry.trace import TracerProvider
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
from shared.telemetry.tracing import current_goal_id

log = logging.getLogger("goalrail.bus")

Handler = Callable[[Event], Awaitable[Sequence[Event]]]

RETRY_WAIT_S = 0.2  # first wait between tries of a failing handler; doubles, at most 2 s

ALL_TOPICS: tuple[str, ...] = tuple(t.value for t in Topic) + tuple(t.dlq for t in Topic)


def make_broker(settings: Settings, tracer_provider: TracerProvider | None = None) -> KafkaBroker:
    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

    middlewares = [KafkaTelemetryMiddleware(tracer_provider=tracer_provider)]
    return KafkaBroker(
        settings.kafka_bootstrap,
        enable_idempotence=settings.kafka_idempotence,
        acks="all",
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
            headers={"ce_type": event.type, "ce_id": event.id, "content-type": "application/json"},
            no_confirm=True,
        )
        for event in events
    ]
    acks = [ack for ack in pending if inspect.isawaitable(ack)]  # the in-memory TestKafkaBroker returns none
    if acks:
        await asyncio.gather(*acks)


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

    def __init__(self, broker: KafkaBroker, service: str, handler: Handler, attempts: int = 3) -> None:
        self.broker = broker
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
        await publish(self.broker, outgoing)

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
        await self.broker.publish(
            json.dumps(body).encode(),
            topic=f"{topic}.dlq",
            key=record.key,
            headers={
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
        await publish(self.broker, [rejected])


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
