"""How long the keyed consumer's poll may wait: at the cap it must not wait at all, or the first
slot that frees would sit idle until the poll's timeout (the records are then fetched late)."""

from opentelemetry import trace

from shared.consumer import BACKLOG_POLL_MS, FETCH_TIMEOUT_MS, KeyedConsumer
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
