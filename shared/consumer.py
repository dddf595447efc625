"""The services' Kafka consumer: one consumer-group member per process, feeding the keyed
scheduler (shared/keyed.py) so goals are handled side by side while each goal's events keep
their order, and committing each partition only up to its lowest unfinished offset.

FastStream's subscribers handle one message at a time (or one partition per worker), so this
loop uses aiokafka directly (and handlers publish on aiokafka too: shared.bus.KafkaPublisher);
each record gets the `<topic> process` consumer span FastStream would give it, parented by the
trace context in its headers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.semconv.trace import SpanAttributes

from shared.keyed import KeyedScheduler, Work
from shared.settings import Settings
from shared.telemetry.tracing import never_records

log = logging.getLogger("goalrail.consumer")

RecordHandler = Callable[[ConsumerRecord], Awaitable[None]]
# judged from a record's topic and text headers before it is parsed: False = nothing to do here
RecordFilter = Callable[[str, Mapping[str, str]], bool]

FETCH_TIMEOUT_MS = 200  # how long one poll waits; the loop also polls while paused (max.poll.interval)
BACKLOG_POLL_MS = 10  # how long a poll waits while some partitions are paused for their backlog
COMMIT_INTERVAL_S = 0.05  # commits are batched off the critical path; a crash only means redelivery
STOP_GRACE_S = 10.0
BACKLOG_PER_SLOT = 16  # offsets a partition may run ahead of its commit point, per in-flight slot
# Records handed to the scheduler at a time; the rest of a fetch stays in aiokafka's buffer for
# the next poll, which returns at once. Handed over all together, a burst of 64 records was
# handled in lockstep: each handler's store write and publish waited for all 64 to be parsed and
# handled, so a burst's first event went out last (slow steps 0.85 -> 0.81 ideal/actual once
# bursts travelled in one produce request, see shared.bus.PRODUCER_BATCH_BYTES).
HANDOFF_RECORDS = 16


class KeyedConsumer:
    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Sequence[str],
        handle: RecordHandler,
        tracer: trace.Tracer,
        max_in_flight: int | None = None,
        wants: RecordFilter | None = None,
    ) -> None:
        self._settings = settings
        self._wants = wants
        self._group_id = group_id
        self._topics = list(topics)
        self._handle = handle
        self._tracer = tracer
        self._spans_dropped = never_records(tracer)
        self.scheduler = KeyedScheduler(self._process, max_in_flight or settings.max_in_flight)
        self._consumer: AIOKafkaConsumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._backlog_limit = BACKLOG_PER_SLOT * self.scheduler.max_in_flight

    async def start(self) -> None:
        session_ms = self._settings.kafka_session_timeout_ms
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.kafka_bootstrap,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 5, 500),
            fetch_max_wait_ms=self._settings.kafka_fetch_max_wait_ms,
        )
        await self._consumer.start()
        self._consumer.subscribe(self._topics, listener=_CommitOnRevoke(self._release))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._fetch_loop(), name=f"{self._group_id}-fetch"),
                       loop.create_task(self._commit_loop(), name=f"{self._group_id}-commit")]
        await self._joined(timeout=2 * session_ms / 1000)

    async def _joined(self, timeout: float) -> None:
        """Return once the group gave this member its partitions, so a service that says it is
        ready consumes at once (a join takes a moment; the first goal should not pay for it)."""
        consumer = self._consumer
        assert consumer is not None
        deadline = asyncio.get_running_loop().time() + timeout
        while not consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                log.warning("%s has no partitions after %.0fs (more members than partitions?)", self._group_id, timeout)
                return
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop fetching, let held records finish for a while, commit what finished, leave."""
        if self._consumer is None:
            return
        fetch, commit = self._tasks
        fetch.cancel()
        await asyncio.gather(fetch, return_exceptions=True)
        if not await self.scheduler.drain(STOP_GRACE_S):
            log.warning("%s stopped with %d records unfinished; they are redelivered", self._group_id,
                        self.scheduler.held)
        await self.scheduler.close()
        commit.cancel()
        await asyncio.gather(commit, return_exceptions=True)
        await self._commit(self.scheduler.commit_points())
        await self._consumer.stop()
        self._consumer = None

    def assigned(self) -> set[TopicPartition]:
        """The partitions the group gave this member now."""
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    # --- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            paused = self._pause_when_full(consumer)
            batches = await consumer.getmany(timeout_ms=self._poll_timeout_ms(paused),
                                             max_records=min(max(self.scheduler.room, 1), HANDOFF_RECORDS))
            for partition, records in batches.items():
                for record in records:
                    headers = _text_headers(record)  # decoded once: the filter and the trace context read them
                    if self._wants is None or self._wants(record.topic, headers):
                        self.scheduler.submit(Work(_key(record), partition, record.offset, (record, headers)))
                    else:
                        self.scheduler.skip(partition, record.offset)
            if self.scheduler.full:
                await self.scheduler.wait_for_room(FETCH_TIMEOUT_MS / 1000)
            elif batches:
                await asyncio.sleep(0)  # let this handoff's handlers start before the next one

    def _poll_timeout_ms(self, paused: bool) -> int:
        """How long this poll may wait for records. At the cap nothing can come (every partition
        is paused): return at once and wait for room instead, or the first free slot would wait
        for the poll's timeout. With some partitions paused for their backlog, poll briefly: a
        record finishing may resume them."""
        if self.scheduler.full:
            return 0
        return BACKLOG_POLL_MS if paused else FETCH_TIMEOUT_MS

    def _pause_when_full(self, consumer: AIOKafkaConsumer) -> bool:
        """At the cap, fetch nothing more (but keep polling, so the group keeps this member);
        a partition whose commit point lags too far behind what was fetched waits as well.
        True when any partition is paused."""
        assigned = consumer.assignment()
        paused = assigned if self.scheduler.full else assigned & self.scheduler.backlogged(self._backlog_limit)
        consumer.resume(*(assigned - paused))
        consumer.pause(*paused)
        return bool(paused)

    async def _process(self, fetched: tuple[ConsumerRecord, dict[str, str]]) -> None:
        record, headers = fetched
        parent = propagate.extract(headers)
        if self._spans_dropped and trace.get_current_span(parent).get_span_context().is_valid:
            token = otel_context.attach(parent)  # the handler runs in the trace of the record
            try:
                await self._handle(record)
            finally:
                otel_context.detach(token)
            return
        attributes = {
            SpanAttributes.MESSAGING_SYSTEM: "kafka",
            SpanAttributes.MESSAGING_OPERATION: "process",
            SpanAttributes.MESSAGING_DESTINATION_NAME: record.topic,
            SpanAttributes.MESSAGING_KAFKA_DESTINATION_PARTITION: record.partition,
            SpanAttributes.MESSAGING_KAFKA_MESSAGE_OFFSET: record.offset,
            SpanAttributes.MESSAGING_MESSAGE_PAYLOAD_SIZE_BYTES: len(record.value or b""),
            "messaging.consumer.group.name": self._group_id,
        }
        if record.key is not None:
            attributes[SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY] = record.key.decode(errors="replace")
        with self._tracer.start_as_current_span(
            f"{record.topic} process", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ):
            await self._handle(record)

    # --- committing -----------------------------------------------------------------------------

    async def _release(self, revoked: set[TopicPartition]) -> None:
        """Before partitions move to another member: finish (or give up on) their running records
        within half a session timeout and commit how far they got, so the new owner repeats as
        little as possible."""
        grace = self._settings.kafka_session_timeout_ms / 2000
        await self._commit(await self.scheduler.revoke(revoked, timeout=grace))

    async def _commit_loop(self) -> None:
        while True:
            await self.scheduler.progressed.wait()
            self.scheduler.progressed.clear()
            await self._commit(self.scheduler.commit_points())
            await asyncio.sleep(COMMIT_INTERVAL_S)

    async def _commit(self, points: dict) -> None:
        consumer = self._consumer
        if consumer is None or not points:
            return
        assigned = consumer.assignment()
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in points.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # a rebalance took the partitions: the new owner starts from the last commit
            log.warning("%s could not commit %s: %s", self._group_id, _describe(offsets), exc)
        except KafkaError as exc:
            log.warning("%s commit failed (%s); retried with the next commit", self._group_id, exc)
            self.scheduler.forget_commits(offsets)


class _CommitOnRevoke(ConsumerRebalanceListener):
    def __init__(self, release: Callable[[set[TopicPartition]], Awaitable[None]]) -> None:
        self._release = release

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


def _key(record: ConsumerRecord) -> object:
    """Events are keyed by goal id; a record without a key keeps its partition's order."""
    return record.key if record.key is not None else (record.topic, record.partition)


def _text_headers(record: ConsumerRecord) -> dict[str, str]:
    return {name: value.decode(errors="replace") for name, value in (record.headers or ()) if value is not None}


def _describe(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{meta.offset}" for tp, meta in offsets.items())
