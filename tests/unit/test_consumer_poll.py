"""How long the keyed consumer's poll may wait: at the cap it must not wait at all, or the first
slot that frees would sit idle until the poll's timeout (the records are then fetched late)."""

import asyncio

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace

from shared.consumer import BACKLOG_POLL_MS, FETCH_TIMEOUT_MS, HANDOFF_RECORDS, KeyedConsumer
from shared.keyed import Work
from shared.settings import Settings


async def _noop(record: object) -> None:
    return None


def _consumer(max_in_flight: int) -> KeyedConsumer:
    return KeyedConsumer(Settings(), "test", ["t"], _noop, trace.NoOpTracer(), max_in_flight=max_in_flight)


async def test_poll_waits_for_records_when_nothing_is_paused() -> None:
    assert _consumer(2)._poll_timeout_ms(paused=False) == FETCH_TIMEOUT_MS


async def test_poll_returns_at_once_at_the_cap() -> None:
    consumer = _consumer(2)
    for offset in range(2):
        consumer.scheduler.submit(Work(f"goal-{offset}", "p0", offset, None))
    assert consumer.scheduler.full
    assert consumer._poll_timeout_ms(paused=True) == 0
    await consumer.scheduler.close()


async def test_poll_is_brief_while_a_partition_waits_for_its_backlog() -> None:
    assert _consumer(4)._poll_timeout_ms(paused=True) == BACKLOG_POLL_MS < FETCH_TIMEOUT_MS


class _BufferedFetch:
    """aiokafka's consumer after a fetch that returned a burst: getmany hands out what is
    buffered, at most `max_records` at a time, then waits for its timeout."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        self.buffered = records
        self.partition = TopicPartition("t", 0)

    def assignment(self) -> set[TopicPartition]:
        return {self.partition}

    def pause(self, *partitions: TopicPartition) -> None: ...

    def resume(self, *partitions: TopicPartition) -> None: ...

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        if not self.buffered:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        handed, self.buffered = self.buffered[:max_records], self.buffered[max_records:]
        return {self.partition: handed}


async def test_a_burst_is_handed_over_a_part_at_a_time_so_its_first_records_start_at_once() -> None:
    burst = [ConsumerRecord("t", 0, offset, 0, 0, f"goal-{offset}".encode(), b"{}", None, 0, 0, ())
             for offset in range(3 * HANDOFF_RECORDS)]
    fetch = _BufferedFetch(burst)
    handed_over_when_started: list[int] = []

    async def handle(record: ConsumerRecord) -> None:
        handed_over_when_started.append(len(burst) - len(fetch.buffered))

    consumer = KeyedConsumer(Settings(), "test", ["t"], handle, trace.NoOpTracer(), max_in_flight=len(burst))
    consumer._consumer = fetch  # type: ignore[assignment]
    loop = asyncio.create_task(consumer._fetch_loop())
    while len(handed_over_when_started) < len(burst):
        await asyncio.sleep(0.01)
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    # the first part's handlers ran before the rest of the burst was handed over
    assert handed_over_when_started[:HANDOFF_RECORDS] == [HANDOFF_RECORDS] * HANDOFF_RECORDS
    assert max(handed_over_when_started) == len(burst)
    await consumer.scheduler.close()


async def test_with_spans_dropped_a_record_is_handled_in_the_trace_its_headers_carry() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from shared.telemetry.tracing import current_trace_id

    seen: list[str | None] = []

    async def handle(record: ConsumerRecord) -> None:
        seen.append(current_trace_id())

    tracer = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    consumer = KeyedConsumer(Settings(), "test", ["t"], handle, tracer)
    traced = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-00"}
    record = ConsumerRecord("t", 0, 0, 0, 0, b"goal-1", b"{}", None, 0, 0, ())
    await consumer._process((record, traced))
    await consumer._process((record, {}))  # no trace context: a trace of its own starts here
    assert seen[0] == "ab" * 16
    assert seen[1] is not None and seen[1] != "ab" * 16
    assert current_trace_id() is None  # the record's context ends with its handling
