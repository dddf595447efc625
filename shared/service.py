"""What every service process shares: tracing, logging, the broker, the publisher, the guarded
keyed consumer.

A service's app module only builds its dependencies and names its topics and handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from faststream import FastStream
from opentelemetry import trace

from shared.bus import ConsumeGuard, EventSink, Handler, KafkaPublisher, ensure_topics, make_broker
from shared.consumer import KeyedConsumer, RecordFilter
from shared.events import Topic
from shared.settings import Settings
from shared.telemetry.tracing import configure_logging, setup_tracing

log = logging.getLogger("goalrail.service")


class ServiceRuntime:
    def __init__(self, name: str, settings: Settings) -> None:
        self.name = name
        self.settings = settings
        endpoint = str(settings.otlp_endpoint) if settings.otlp_endpoint else None
        self.tracer_provider = setup_tracing(name, endpoint)
        self.tracer = trace.get_tracer(f"goalrail.{name}", tracer_provider=self.tracer_provider)
        # the FastStream broker serves the AsyncAPI document, the app's lifecycle and the
        # occasional publish (operators' decisions); handlers' events go out on the publisher
        self.broker = make_broker(settings, self.tracer_provider)
        self.publisher = KafkaPublisher(settings, self.tracer)

    def guard(self, handler: Handler, sink: EventSink | None = None) -> ConsumeGuard:
        return ConsumeGuard(sink or self.publisher, self.name, handler, self.settings.handler_attempts)

    def consumer(self, topics: Sequence[Topic], handler: Handler, wants: RecordFilter | None = None) -> KeyedConsumer:
        """This service's group member: goals side by side, each goal's events in order; records
        `wants` refuses are committed unparsed."""
        return KeyedConsumer(self.settings, self.name, [t.value for t in topics], self.guard(handler), self.tracer,
                             wants=wants)

    def app(
        self,
        topics: Sequence[Topic],
        handler: Handler,
        on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
        wants: RecordFilter | None = None,
    ) -> FastStream:
        consumer = self.consumer(topics, handler, wants)

        async def start() -> None:
            await ensure_topics(self.settings.kafka_bootstrap, self.settings.kafka_partitions)
            await self.publisher.start()
            for hook in on_startup:
                await hook()

        async def ready() -> None:
            await consumer.start()  # after the broker: handlers publish through it
            log.info("%s ready, consuming %s (%d events in flight at most)", self.name,
                     ", ".join(t.value for t in topics), self.settings.max_in_flight)

        async def stop() -> None:
            await consumer.stop()  # lets held records finish: they still publish
            await self.publisher.stop()

        async def flush_traces() -> None:
            self.tracer_provider.shutdown()

        return FastStream(self.broker, on_startup=[start], after_startup=[ready], on_shutdown=[stop],
                          after_shutdown=[flush_traces], logger=None)

    @contextlib.asynccontextmanager
    async def serving(self, topics: Sequence[Topic], handler: Handler,
                      wants: RecordFilter | None = None) -> AsyncIterator[KeyedConsumer]:
        """The broker and a consumer running `handler`, without the app's start-up hooks (tests)."""
        consumer = self.consumer(topics, handler, wants)
        await self.broker.start()
        try:
            await self.publisher.start()
            await consumer.start()
            try:
                yield consumer
            finally:
                await consumer.stop()
        finally:
            await self.publisher.stop()
            await self.broker.stop()


# allocations between two collections of the young generation (CPython's default: 700)
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """A service makes thousands of short-lived objects per event (models, dicts, coroutines);
    with CPython's default threshold the cyclic collector walked the young generation a few
    times per event. Reference counting frees nearly all of them anyway, so collecting less
    often costs no memory (peak RSS unchanged in `make bench`), and freezing what start-up made
    keeps the collector from walking it again: the services' CPU per goal fell by about 6 % in
    interleaved bench runs."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 50)


def run(create_app: Callable[[Settings], FastStream], name: str) -> None:
    """Entry point of `python -m services.<name>`: settings from the environment, run until
    SIGTERM/SIGINT, then drain and flush traces."""
    settings = Settings()
    configure_logging(name, settings.log_level)
    app = create_app(settings)
    tune_gc()  # after the imports and wiring: they live as long as the process
    asyncio.run(app.run())
