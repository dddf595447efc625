"""The Python client business code imports: submit goals, await or follow their outcomes.

    async with GoalrailClient("kafka:9092", tenant="acme") as client:
        outcome = await client.submit_and_wait("Prepare the Q3 sales report for the board", requester="cfo")

People answer approvals and act on failed goals with `decide` and `act_on_goal`.

Publishing goes through FastStream (so the submit is traced and the trace context travels in
the Kafka headers); reading outcomes uses a group-less aiokafka consumer assigned to every
partition, so a watcher is positioned at once, without waiting for a consumer-group join.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, TopicPartition
from faststream.kafka import KafkaBroker
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError

from shared.bus import publish
from shared.events import (
    ApprovalDecided,
    Constraints,
    Event,
    GoalActionRequested,
    GoalCompleted,
    GoalFailed,
    GoalSpec,
    GoalSubmitted,
    Topic,
    parse_approval_id,
    parse_event,
)
from shared.settings import Settings

Outcome = GoalCompleted | GoalFailed


class Received(NamedTuple):
    topic: str
    event: Event | None  # None when the message is not a valid Goalrail event (e.g. on a DLQ)
    raw: bytes
    headers: dict[str, str]


class EventStream:
    """Events of some topics from now on (or from the beginning), in arrival order."""

    def __init__(
        self, bootstrap: str, topics: Iterable[str], from_beginning: bool = False, fetch_max_wait_ms: int = 20
    ) -> None:
        # a short fetch wait: Tansu answers a fetch only when the wait expires (see Settings)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=fetch_max_wait_ms
        )
        self._topics = list(topics)
        self._from_beginning = from_beginning

    async def start(self) -> None:
        await self._consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(await self._partitions_of(topic))
        ]
        self._consumer.assign(partitions)
        if self._from_beginning:
            await self._consumer.seek_to_beginning(*partitions)
        else:
            await self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the lazy seek now, so nothing after it is missed
            await self._consumer.position(partition)

    async def _partitions_of(self, topic: str) -> set[int]:
        for _ in range(50):
            partitions = self._consumer.partitions_for_topic(topic)
            if partitions:
                return partitions
            await self._consumer._client.force_metadata_update()  # noqa: SLF001 — no public API
            await asyncio.sleep(0.1)
        raise LookupError(f"topic {topic!r} does not exist on the broker")

    async def stop(self) -> None:
        await self._consumer.stop()

    async def __aiter__(self) -> AsyncIterator[Received]:
        async for record in self._consumer:
            try:
                event: Event | None = parse_event(record.value)
            except ValidationError:
                event = None
            headers = {k: v.decode(errors="replace") for k, v in record.headers or ()}
            yield Received(record.topic, event, record.value, headers)


def decision_event(
    approval_id: str, goal_id: str, tenant: str, approve: bool, by: str, comment: str = "", source: str = "goalrail/client"
) -> ApprovalDecided:
    """A person's decision; its id is fixed per approval, so only the first decision counts."""
    step_id, attempt = parse_approval_id(approval_id, goal_id)
    return ApprovalDecided(
        id=f"{approval_id}:decided", source=source, goal_id=goal_id, tenant=tenant, approval_id=approval_id,
        step_id=step_id, attempt=attempt, decision="approved" if approve else "rejected", decided_by=by,
        comment=comment,
    )


def goal_action_event(
    goal_id: str, tenant: str, action: str, by: str, comment: str = "", source: str = "goalrail/client"
) -> GoalActionRequested:
    return GoalActionRequested(
        id=f"{goal_id}:action:{action}:{uuid.uuid4().hex[:12]}", source=source, goal_id=goal_id, tenant=tenant,
        action=action, requested_by=by, comment=comment,  # type: ignore[arg-type]
    )


async def publish_traced(
    broker: KafkaBroker, tracer: trace.Tracer, name: str, event: Event, traceparent: str | None = None
) -> None:
    """Publish one event in a span of its own, a child of `traceparent` when given (e.g. the
    ApprovalRequested's), so a person's answer joins the goal's trace."""
    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent}) if traceparent else None
    with tracer.start_as_current_span(name, context=context, attributes={"goalrail.goal_id": event.goal_id}):
        await publish(broker, [event])


class GoalrailClient:
    def __init__(
        self,
        bootstrap: str,
        *,
        tenant: str = "default",
        source: str = "goalrail/client",
        tracer_provider: TracerProvider | None = None,
        idempotence: bool = False,
    ) -> None:
        from shared.bus import make_broker

        self.bootstrap = bootstrap
        self.tenant = tenant
        self.source = source
        settings = Settings(kafka_bootstrap=bootstrap, kafka_idempotence=idempotence)
        self._broker = make_broker(settings, tracer_provider)
        self._tracer = trace.get_tracer("goalrail.client", tracer_provider=tracer_provider)
        self._outcomes: EventStream | None = None
        self._waiters: dict[str, asyncio.Future[Outcome]] = {}
        self._early: dict[str, Outcome] = {}
        self._watch_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GoalrailClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._broker.start()

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._outcomes:
            await self._outcomes.stop()
        await self._broker.stop()

    async def submit(
        self,
        text: str,
        *,
        requester: str,
        tenant: str | None = None,
        input: dict[str, Any] | None = None,
        constraints: Constraints | None = None,
        priority: str = "normal",
        deadline: datetime | None = None,
        playbook: str | None = None,
        goal_id: str | None = None,
        adapt_playbook: bool = False,
    ) -> GoalSubmitted:
        goal_id = goal_id or f"goal-{uuid.uuid4().hex[:16]}"
        event = GoalSubmitted(
            id=f"{goal_id}:submitted",
            source=self.source,
            goal_id=goal_id,
            tenant=tenant or self.tenant,
            goal=GoalSpec(
                text=text,
                requester=requester,
                priority=priority,  # type: ignore[arg-type]
                deadline=deadline,
                input=input or {},
                constraints=constraints or Constraints(),
                playbook=playbook,
                adapt_playbook=adapt_playbook,
            ),
        )
        with self._tracer.start_as_current_span("submit goal", attributes={"goalrail.goal_id": goal_id}):
            await publish(self._broker, [event])
        return event

    async def watch_outcomes(self) -> None:
        """Position the outcome watcher at the end of goals.outcomes (idempotent)."""
        if self._outcomes is not None:
            return
        self._outcomes = EventStream(self.bootstrap, [Topic.GOALS_OUTCOMES.value])
        await self._outcomes.start()
        self._watch_task = asyncio.create_task(self._dispatch_outcomes(self._outcomes))

    async def _dispatch_outcomes(self, stream: EventStream) -> None:
        async for received in stream:
            event = received.event
            if not isinstance(event, (GoalCompleted, GoalFailed)):
                continue
            waiter = self._waiters.pop(event.goal_id, None)
            if waiter and not waiter.done():
                waiter.set_result(event)
            else:
                self._early[event.goal_id] = event

    async def wait_for_outcome(self, goal_id: str, timeout: float = 60.0) -> Outcome:
        """The outcome of a goal submitted after watch_outcomes(); TimeoutError otherwise."""
        await self.watch_outcomes()
        if goal_id in self._early:
            return self._early.pop(goal_id)
        waiter = self._waiters.setdefault(goal_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._waiters.pop(goal_id, None)
            raise TimeoutError(f"no outcome for goal {goal_id} within {timeout:g}s") from None

    async def submit_and_wait(self, text: str, *, timeout: float = 60.0, **fields: Any) -> Outcome:
        await self.watch_outcomes()
        submitted = await self.submit(text, **fields)
        return await self.wait_for_outcome(submitted.goal_id, timeout)

    async def decide(
        self, approval_id: str, goal_id: str, approve: bool, by: str, comment: str = "",
        traceparent: str | None = None,
    ) -> ApprovalDecided:
        """Approve or reject a step waiting for approval (`traceparent`: the request's, to stay in
        the goal's trace)."""
        event = decision_event(approval_id, goal_id, self.tenant, approve, by, comment, self.source)
        await publish_traced(self._broker, self._tracer, f"{event.decision} {approval_id}", event, traceparent)
        return event

    async def act_on_goal(
        self, goal_id: str, action: str, by: str, comment: str = "", traceparent: str | None = None
    ) -> GoalActionRequested:
        """Retry a failed or escalated goal's failed steps, or cancel the goal."""
        event = goal_action_event(goal_id, self.tenant, action, by, comment, self.source)
        await publish_traced(self._broker, self._tracer, f"{action} goal", event, traceparent)
        return event

    def follow(self, topics: Iterable[str] = (Topic.GOALS_OUTCOMES.value,), from_beginning: bool = False) -> EventStream:
        """A stream of events on `topics` (start() it, iterate it, stop() it)."""
        return EventStream(self.bootstrap, topics, from_beginning)
